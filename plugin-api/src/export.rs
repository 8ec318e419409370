//! The one macro a plugin author writes.

/// Exports a hop plugin. Give it an expression that builds the [`crate::Hop`]:
///
/// ```ignore
/// plugin_api::export_hop!(
///     Hop::new(HopDescriptor::new("v2_to_v3", "2.1.0", "3.0.0", "rename a key"))
///         .config(MyConfigRule)
///         .data(MyDataRule)
/// );
/// ```
///
/// The expansion owns every FFI detail: the exported root module, the `catch_unwind` around
/// every entry point and around building the hop (a panicking plugin becomes an error in the
/// host that carries the panic's message, never an abort), and the descriptor's ABI version. The plugin crate must be a `cdylib` and depend on
/// `abi_stable` (the attribute below expands to paths into it).
#[macro_export]
macro_rules! export_hop {
    ($make:expr) => {
        #[$crate::abi_stable::export_root_module]
        pub fn trustformers_migrate_hop_root() -> ::std::result::Result<
            $crate::ffi::HopModule_Ref,
            $crate::abi_stable::std_types::RBoxError,
        > {
            $crate::ffi::load(|| $make)
        }
    };
}
