//! The stable ABI, and the host's client for it. **Not for plugin authors**, and hidden from the
//! crate's documentation: [`crate::export_hop!`] wires the plugin side up, and the host talks to
//! plugins through [`HopClient`]. Its items are public because the macro's expansion (in the
//! plugin crate) and the host (another crate) must name them; their shape may change in any
//! release, as long as the root module and the payloads below do not.
//!
//! # Why it looks like this
//! * The root module is a prefix type that is **frozen**: abi_stable lets a plugin be newer than
//!   the host but rejects a plugin whose root module has fewer fields than the host's, so adding
//!   a field would orphan every plugin already built. Everything that may evolve travels as
//!   versioned JSON ([`crate::PAYLOAD_VERSION`]) or through the generic [`HopModule::call`].
//! * A panic that unwinds out of an `extern "C"` fn makes abi_stable exit the whole process,
//!   so every entry point runs its body under `catch_unwind` and returns `RErr` instead.
//! * Each plugin links its own copy of this crate, so the [`register`]ed hop below is per plugin.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBoxError, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait, StableAbi};
use serde::{Deserialize, Serialize};

use crate::descriptor::HopDescriptor;
use crate::error::RuleError;
use crate::model::{with_host_checksums, FileEntry, ModelFolder, ModelOptions, ModelOutcome};
use crate::rules::{ConfigOutcome, Hop};
use crate::view::{DecodedView, ViewBuffers};

/// Callbacks from a plugin into the host (progress, log lines, cancellation).
/// Payloads are JSON so that new event kinds need no ABI change.
#[sabi_trait]
pub trait HostEvents {
    /// Returns `false` when the host wants the plugin to stop (e.g. timeout).
    #[sabi(last_prefix_field)]
    fn event(&mut self, kind: RStr<'_>, payload: RStr<'_>) -> bool;
}

/// The host-events object as it crosses the boundary.
pub type HostEventsRef<'a> = HostEvents_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>;

/// A record a data rule refused: its index in the batch and a JSON [`RuleError`].
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct RecordFailure {
    pub index: u64,
    pub error: RString,
}

/// Result of one data batch: migrated records (`\n`-terminated) plus the refused ones.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct BatchOutput {
    pub records: RVec<u8>,
    pub failures: RVec<RecordFailure>,
}

/// The root module every hop plugin exports. Frozen at plugin-api 1.0.0: never add, remove or
/// reorder fields (see the module docs).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HopModule_Ref)))]
#[sabi(missing_field(panic))]
pub struct HopModule {
    /// JSON [`HopDescriptor`].
    pub descriptor: extern "C" fn() -> RResult<RString, RString>,
    /// JSON [`ConfigRequest`] in, JSON [`ConfigOutcome`] out.
    pub migrate_config: extern "C" fn(request: RStr<'_>) -> RResult<RString, RString>,
    /// JSON [`DataRequest`] plus `\n`-separated records in.
    pub migrate_data:
        extern "C" fn(request: RStr<'_>, records: RSlice<'_, u8>) -> RResult<BatchOutput, RString>,
    /// JSON [`ModelRequest`] in, JSON [`ModelOutcome`] out.
    pub migrate_model:
        extern "C" fn(request: RStr<'_>, host: HostEventsRef<'_>) -> RResult<RString, RString>,
    /// Generic entry point for operations added after 1.0.0: `op` names it, JSON in and out.
    #[sabi(last_prefix_field)]
    pub call: extern "C" fn(
        op: RStr<'_>,
        request: RStr<'_>,
        host: HostEventsRef<'_>,
    ) -> RResult<RString, RString>,
}

impl RootModule for HopModule_Ref {
    declare_root_module_statics! {HopModule_Ref}
    const BASE_NAME: &'static str = "trustformers_migrate_hop";
    const NAME: &'static str = "trustformers_migrate_hop";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigRequest {
    pub payload_version: u32,
    pub content: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DataRequest {
    pub payload_version: u32,
    /// Set (since 1.5.0, only for plugins whose descriptor says `rules.data_edits`): the
    /// records are a view — the batch's text, then the table of
    /// [`ViewBatch::encode_table`](crate::view::ViewBatch::encode_table) — and the reply's
    /// `records` are the rule's encoded edits. Plugins built before 1.5.0 never get it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<ViewRequest>,
}

/// How a view payload is laid out.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ViewRequest {
    /// Bytes of text before the table.
    pub text_len: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModelRequest {
    pub payload_version: u32,
    pub folder: ModelFolder,
    pub options: ModelOptions,
    /// Set (since 1.8.0) when the host hashed files of the folder's source: their sizes and
    /// sha256, paths relative to the folder, which [`ModelFolder::file_entry`] answers from
    /// rather than read the files again. Plugins built before 1.8.0 ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<FileEntry>,
}

// ---------------------------------------------------------------------------------------------
// Plugin side

static HOP: OnceLock<Hop> = OnceLock::new();

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The root module, after installing the plugin's hop: what the root-module constructor the
/// macro generates returns. A panic while the hop is built becomes a load error that carries
/// its message, which the host shows; abi_stable's own catch would report only that the
/// constructor unwound. Since 1.3.0.
pub fn load(make: impl FnOnce() -> Hop) -> Result<HopModule_Ref, RBoxError> {
    match catch_unwind(AssertUnwindSafe(|| register(make))) {
        Ok(()) => Ok(root_module()),
        Err(payload) => {
            let recorded = LAST_PANIC.with(|p| p.borrow_mut().take());
            // One line: the host lists it as the plugin's status.
            let message = recorded
                .unwrap_or_else(|| panic_text(payload.as_ref()))
                .replace('\n', " ");
            Err(RBoxError::from_fmt(&format!(
                "it panicked while building its hop (the code given to export_hop!): {message}"
            )))
        }
    }
}

/// Installs the plugin's hop. [`load`] calls it (the macro before 1.3.0 called it directly).
pub fn register(make: impl FnOnce() -> Hop) {
    HOP.get_or_init(|| {
        // This plugin's own std: the hook records the message for the host instead of
        // printing a backtrace banner into the operator's terminal.
        std::panic::set_hook(Box::new(|info| {
            let msg = format!("{info}");
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
        }));
        make()
    });
}

/// The root module value; the macro returns it from the exported constructor.
pub fn root_module() -> HopModule_Ref {
    HopModule {
        descriptor,
        migrate_config,
        migrate_data,
        migrate_model,
        call,
    }
    .leak_into_prefix()
}

fn hop() -> Result<&'static Hop, RuleError> {
    HOP.get()
        .ok_or_else(|| RuleError::new("plugin was loaded without registering its hop"))
}

/// Runs `body`, turning both errors and panics into `RErr(json)`.
fn guarded<T>(body: impl FnOnce() -> Result<T, RuleError>) -> RResult<T, RString> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(error_json(&e)),
        Err(payload) => {
            let recorded = LAST_PANIC.with(|p| p.borrow_mut().take());
            let message = recorded.unwrap_or_else(|| panic_text(payload.as_ref()));
            let e = RuleError::new(format!("plugin panicked: {message}")).panicked();
            RResult::RErr(error_json(&e))
        }
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

fn error_json(e: &RuleError) -> RString {
    serde_json::to_string(e)
        .unwrap_or_else(|_| e.message.clone())
        .into()
}

fn to_json<T: Serialize>(v: &T) -> Result<RString, RuleError> {
    serde_json::to_string(v)
        .map(RString::from)
        .map_err(|e| RuleError::new(format!("cannot encode reply: {e}")))
}

fn from_json<'a, T: Deserialize<'a>>(s: &'a str, what: &str) -> Result<T, RuleError> {
    serde_json::from_str(s).map_err(|e| RuleError::new(format!("malformed {what} from host: {e}")))
}

fn missing(rule: &str) -> RuleError {
    RuleError::new(format!("this plugin has no {rule} rule"))
}

extern "C" fn descriptor() -> RResult<RString, RString> {
    guarded(|| to_json(&hop()?.descriptor()))
}

extern "C" fn migrate_config(request: RStr<'_>) -> RResult<RString, RString> {
    guarded(|| {
        let req: ConfigRequest = from_json(request.as_str(), "config request")?;
        let rule = hop()?.config_rule().ok_or_else(|| missing("config"))?;
        to_json(&rule.migrate(&req.content)?)
    })
}

extern "C" fn migrate_data(
    request: RStr<'_>,
    records: RSlice<'_, u8>,
) -> RResult<BatchOutput, RString> {
    guarded(|| {
        let req: DataRequest = from_json(request.as_str(), "data request")?;
        if let Some(view) = req.view {
            return migrate_view(view, records.as_slice());
        }
        // `migrate_data_batch` reserves what the batch needs.
        let mut out = Vec::new();
        let failures = hop()?
            .migrate_data_batch(records.as_slice(), &mut out)
            .into_iter()
            .map(|(index, e)| RecordFailure {
                index,
                error: error_json(&e),
            })
            .collect();
        Ok(BatchOutput {
            records: out.into(),
            failures,
        })
    })
}

/// The view path: decode the host's view, run the edit rule, reply with the edits.
fn migrate_view(view: ViewRequest, payload: &[u8]) -> Result<BatchOutput, RuleError> {
    let rule = hop()?
        .data_edit_rule()
        .ok_or_else(|| missing("data edit"))?;
    let malformed = || RuleError::new("malformed record view from host");
    let n = usize::try_from(view.text_len).map_err(|_| malformed())?;
    let text = payload
        .get(..n)
        .and_then(|t| std::str::from_utf8(t).ok())
        .ok_or_else(malformed)?;
    thread_local! {
        static BUFFERS: RefCell<ViewBuffers> = RefCell::default();
    }
    let buffers = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let decoded =
        DecodedView::decode_into(text, &payload[n..], buffers).map_err(|_| malformed())?;
    let (edits, refused) = decoded.run(&|record, edits| rule.edit(record, edits));
    BUFFERS.with(|b| *b.borrow_mut() = decoded.into_buffers());
    Ok(BatchOutput {
        records: edits.into(),
        failures: refused
            .into_iter()
            .map(|(index, e)| RecordFailure {
                index,
                error: error_json(&e),
            })
            .collect(),
    })
}

extern "C" fn migrate_model(
    request: RStr<'_>,
    _host: HostEventsRef<'_>,
) -> RResult<RString, RString> {
    guarded(|| {
        let req: ModelRequest = from_json(request.as_str(), "model request")?;
        let rule = hop()?.model_rule().ok_or_else(|| missing("model"))?;
        let outcome = with_host_checksums(&req.folder.source, req.checksums, || {
            rule.migrate(&req.folder, &req.options)
        })?;
        to_json(&outcome)
    })
}

extern "C" fn call(
    op: RStr<'_>,
    _request: RStr<'_>,
    _host: HostEventsRef<'_>,
) -> RResult<RString, RString> {
    guarded(|| match op.as_str() {
        "ping" => to_json(&serde_json::json!({ "payload_version": crate::PAYLOAD_VERSION })),
        other => Err(RuleError::new(format!("unknown operation `{other}`"))),
    })
}

// ---------------------------------------------------------------------------------------------
// Host side

/// Why a call into a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin refused the input (or panicked); the error says where.
    #[error("{0}")]
    Rule(RuleError),
    /// The plugin answered something the host cannot read.
    #[error("plugin sent a malformed reply: {0}")]
    Protocol(String),
}

impl CallError {
    fn from_rerr(s: RString) -> Self {
        match serde_json::from_str::<RuleError>(s.as_str()) {
            Ok(e) => CallError::Rule(e),
            Err(_) => CallError::Rule(RuleError::new(s.into_string())),
        }
    }
}

/// A record refused by a plugin during a batch.
#[derive(Debug, Clone)]
pub struct RefusedRecord {
    pub index: u64,
    pub error: RuleError,
}

/// Typed, host-side access to a loaded plugin. Payload encoding lives here and in the plugin
/// side above, nowhere else.
#[derive(Clone, Copy)]
pub struct HopClient {
    module: HopModule_Ref,
}

struct NoEvents;
impl HostEvents for NoEvents {
    fn event(&mut self, _kind: RStr<'_>, _payload: RStr<'_>) -> bool {
        true
    }
}

impl HopClient {
    pub fn new(module: HopModule_Ref) -> Self {
        HopClient { module }
    }

    pub fn descriptor(&self) -> Result<HopDescriptor, CallError> {
        let raw = (self.module.descriptor())()
            .into_result()
            .map_err(CallError::from_rerr)?;
        serde_json::from_str(raw.as_str()).map_err(|e| CallError::Protocol(e.to_string()))
    }

    pub fn migrate_config(&self, content: &str) -> Result<ConfigOutcome, CallError> {
        let req = ConfigRequest {
            payload_version: crate::PAYLOAD_VERSION,
            content: content.into(),
        };
        let req = serde_json::to_string(&req).map_err(|e| CallError::Protocol(e.to_string()))?;
        let raw = (self.module.migrate_config())(RStr::from(req.as_str()))
            .into_result()
            .map_err(CallError::from_rerr)?;
        serde_json::from_str(raw.as_str()).map_err(|e| CallError::Protocol(e.to_string()))
    }

    /// Migrates `\n`-separated records. The migrated records stay in the plugin's buffer
    /// (no copy); it is freed by the plugin's allocator when dropped.
    pub fn migrate_data(
        &self,
        records: &[u8],
    ) -> Result<(RVec<u8>, Vec<RefusedRecord>), CallError> {
        self.data_call("{\"payload_version\":1}", records)
    }

    /// Sends a view of a batch to the plugin's edit rule and returns the encoded edits:
    /// `payload` is the batch's text (its first `text_len` bytes) then the table of
    /// [`ViewBatch::encode_table`](crate::view::ViewBatch::encode_table), as
    /// [`ViewBatch::with_payload`](crate::view::ViewBatch::with_payload) lends them. Only for
    /// plugins whose descriptor says `rules.data_edits` (1.5.0 and later).
    pub fn migrate_view(
        &self,
        payload: &[u8],
        text_len: usize,
    ) -> Result<(RVec<u8>, Vec<RefusedRecord>), CallError> {
        let request = format!(
            "{{\"payload_version\":{},\"view\":{{\"text_len\":{}}}}}",
            crate::PAYLOAD_VERSION,
            text_len
        );
        self.data_call(&request, payload)
    }

    /// The plugin's `migrate_data` entry, which both the text and the view paths go through:
    /// its output, and the records it refused with their errors read back.
    fn data_call(
        &self,
        request: &str,
        payload: &[u8],
    ) -> Result<(RVec<u8>, Vec<RefusedRecord>), CallError> {
        let batch = (self.module.migrate_data())(RStr::from(request), RSlice::from_slice(payload))
            .into_result()
            .map_err(CallError::from_rerr)?;
        let refused = batch
            .failures
            .iter()
            .map(|f| RefusedRecord {
                index: f.index,
                error: serde_json::from_str(f.error.as_str())
                    .unwrap_or_else(|_| RuleError::new(f.error.as_str())),
            })
            .collect();
        Ok((batch.records, refused))
    }

    /// `checksums`: sizes and sha256 the host took of files of the folder's source (see
    /// [`ModelRequest::checksums`]); empty for none.
    pub fn migrate_model(
        &self,
        folder: &ModelFolder,
        options: &ModelOptions,
        checksums: &[FileEntry],
    ) -> Result<ModelOutcome, CallError> {
        let req = ModelRequest {
            payload_version: crate::PAYLOAD_VERSION,
            folder: folder.clone(),
            options: options.clone(),
            checksums: checksums.to_vec(),
        };
        let req = serde_json::to_string(&req).map_err(|e| CallError::Protocol(e.to_string()))?;
        let mut events = NoEvents;
        let host = HostEvents_TO::from_ptr(&mut events, abi_stable::sabi_trait::TD_Opaque);
        let raw = (self.module.migrate_model())(RStr::from(req.as_str()), host)
            .into_result()
            .map_err(CallError::from_rerr)?;
        serde_json::from_str(raw.as_str()).map_err(|e| CallError::Protocol(e.to_string()))
    }
}
