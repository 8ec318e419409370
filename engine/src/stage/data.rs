//! Data files: streamed in batches through every hop's data rule in memory, so each file is
//! read once and written once whatever the number of hops, and memory stays bounded by the
//! batch size whatever the file size. `*.json` documents (one record, or an array of records)
//! are streamed too, record by record ([`document`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;

use abi_stable::std_types::RVec;
use migrate_transaction::confine::Root;
use migrate_transaction::fsutil::Spare;
use migrate_transaction::staging::Staging;
use migrate_transaction::{fault, journal};
use plugin_api::ffi::{CallError, RefusedRecord};
use plugin_api::program::run::{Chain, Outcome, Scratch};
use plugin_api::view::ViewBatch;
use plugin_api::RuleError;

use super::write_behind::WriteBehind;
use super::{call, plugin_failure, Budget};
use crate::discover::install::{DataFile, DataKind, QUARANTINE};
use crate::discover::registry::LoadedHop;
use crate::document;
use crate::error::{MigrateError, Result};
use crate::observe::Observer;
use crate::settings::OnInvalid;

/// A batch is flushed to the hops at this many bytes even if it has fewer records.
const BATCH_BYTES: usize = 4 << 20;

/// The largest write() the data step makes.
const WRITE_BYTES: usize = 1 << 20;

/// What the data step reads at a time: a piece small enough to stay in the core's cache while
/// its lines are cut and copied into the batch, large enough that a 256 MB log takes 4,000
/// reads.
const READ_BYTES: usize = 64 << 10;

/// What one file's migration did.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStats {
    pub records: u64,
    pub quarantined: u64,
    pub bytes_in: u64,
}

/// How data files are migrated in this run.
pub struct DataRun<'a> {
    pub hops: &'a [LoadedHop],
    /// The hops' declared programs, compiled into one pass (when every data hop has one).
    pub programs: &'a Programs,
    /// The release the run starts from.
    pub from: String,
    /// Refused records allowed in the whole run (quarantine has a ceiling).
    pub max_invalid_records: u64,
    pub on_invalid: OnInvalid,
    pub batch_size: usize,
    /// The data folder's path relative to the staging root (`data`), for quarantine paths.
    pub data_rel: String,
    pub budget: &'a Budget,
    pub observer: &'a dyn Observer,
    pub counters: &'a Counters,
}

/// The data step's running totals across its files, shown as they grow.
#[derive(Default)]
pub struct Counters {
    bytes: AtomicU64,
    records: AtomicU64,
    refused: AtomicU64,
}

impl Counters {
    /// Adds to the totals and shows them.
    pub fn add(&self, observer: &dyn Observer, bytes: u64, records: u64) {
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let r = self.records.fetch_add(records, Ordering::Relaxed) + records;
        observer.step_progress(b, r);
    }
}

/// The data hops' declared programs ([`plugin_api::program`]), compiled into one pass the host
/// runs without calling a plugin; what a program leaves to the rules goes through the rules.
///
/// A program only describes its hop's rule, so the host does not take it on trust: until one
/// batch in which the programs wrote records has come out byte for byte the same both ways
/// (records, and refusals with their words), every batch is run both ways and the rules'
/// result is kept. A difference drops the programs for every batch not yet started, with a
/// warning naming the hops: the rules decide. It is a check on a sample, not a proof (the
/// plugins' own tests compare program and rule): batches the programs wrote after an earlier
/// batch agreed stand, and the pre-swap check still reads every record.
pub struct Programs {
    chain: Option<Chain>,
    /// Labels of the hops whose programs make up `chain`, for the warning.
    hops: String,
    checked: AtomicBool,
    dropped: Mutex<Option<String>>,
    records: AtomicU64,
}

impl Programs {
    /// Compiles the programs of `hops`' data hops, when every one of them declares a program
    /// this host reads, and the run does not ask for another path.
    pub fn compile(hops: &[LoadedHop]) -> Programs {
        let data: Vec<&LoadedHop> = hops.iter().filter(|h| h.descriptor.rules.data).collect();
        let programs: Option<Vec<_>> = data.iter().map(|h| h.descriptor.data_program()).collect();
        let chain = programs
            .filter(|p| !p.is_empty() && !hop_by_hop() && !rules_only())
            .and_then(|p| Chain::compile(&p.iter().collect::<Vec<_>>()).ok());
        Programs {
            chain,
            hops: data
                .iter()
                .map(|h| hop_label(h))
                .collect::<Vec<_>>()
                .join(", "),
            checked: AtomicBool::new(false),
            dropped: Mutex::new(None),
            records: AtomicU64::new(0),
        }
    }

    /// Records the programs migrated.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Why the programs were dropped, if they were.
    pub fn dropped(&self) -> Option<String> {
        self.dropped.lock().ok().and_then(|d| d.clone())
    }

    fn chain(&self) -> Option<&Chain> {
        let dropped = self.dropped.lock().map_or(true, |d| d.is_some());
        self.chain.as_ref().filter(|_| !dropped)
    }

    fn drop_programs(&self, file: &DataFile, place: u64) {
        if let Ok(mut d) = self.dropped.lock() {
            d.get_or_insert_with(|| {
                format!(
                    "the declared data programs of {} disagree with their rules on {}: the rules \
                     migrated every record (nothing is lost, the run is slower); report this \
                     to the plugins' authors",
                    self.hops,
                    place_name(file, place)
                )
            });
        }
    }
}

/// A record a hop refused, with its place in the original file.
struct Refusal {
    place: u64,
    hop: String,
    error: RuleError,
    raw: Vec<u8>,
}

impl DataRun<'_> {
    fn data_hops(&self) -> impl Iterator<Item = &LoadedHop> {
        self.hops.iter().filter(|h| h.descriptor.rules.data)
    }

    /// Migrates `file` (under `root`) into `staging`.
    pub fn migrate_file(
        &self,
        root: &Path,
        file: &DataFile,
        staging: &mut Staging,
    ) -> Result<FileStats> {
        match file.kind {
            DataKind::Lines => self.migrate_lines(root, file, staging),
            DataKind::Document => self.migrate_document(root, file, staging),
        }
    }

    fn migrate_lines(
        &self,
        root: &Path,
        file: &DataFile,
        staging: &mut Staging,
    ) -> Result<FileStats> {
        let src_path = root.join(&file.rel);
        let src = open_source(root, file)?;
        let dst_path = staging.dir().join(&file.rel);
        let write_err =
            |e| MigrateError::io(format!("cannot write staged {}", dst_path.display()), e);
        // Small: batch outputs (hundreds of KiB) go straight to the file rather than through
        // the buffer, which only gathers the odd verbatim line.
        let mut out = BufWriter::with_capacity(
            64 << 10,
            WriteBehind::new(staged_file(root, file, staging)?),
        );
        let mut quarantine = Quarantine::new(self, root, file, staging)?;
        let stats = self.pipeline(
            file,
            |send| self.read_batches(src, &src_path, send),
            &mut |bytes| {
                // In pieces of at most 1 MiB: on this kind of VM, write() calls of 2 MiB and
                // more were up to 10× slower than calls of 64 KiB–1 MiB.
                for piece in bytes.chunks(WRITE_BYTES) {
                    out.write_all(piece).map_err(|e| {
                        MigrateError::io(format!("cannot write staged {}", file.rel), e)
                    })?;
                }
                Ok(())
            },
            &mut quarantine,
        )?;
        // Not synced here: the host does that while the models step runs (see
        // `stage::on_disk`); closing the file keeps every byte in the page cache.
        out.into_inner().map_err(|e| write_err(e.into_error()))?;
        quarantine.finish(staging)?;
        Ok(stats)
    }

    /// What every data file goes through: `read`, on a thread of its own, cuts the file into
    /// work and hands it to `send` (until that returns false: the run has stopped) and returns
    /// the bytes it read; workers run the hops on batches in parallel; `write` gets the
    /// results in file order.
    fn pipeline(
        &self,
        file: &DataFile,
        read: impl FnOnce(&mut dyn FnMut(Work) -> bool) -> Result<u64> + Send,
        write: &mut dyn FnMut(&[u8]) -> Result<()>,
        quarantine: &mut Quarantine,
    ) -> Result<FileStats> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let (work_tx, work_rx) = mpsc::sync_channel::<(u64, Work)>(threads * 2);
        let (done_tx, done_rx) = mpsc::sync_channel::<(u64, Result<Done>)>(threads * 2);
        let work_rx = Mutex::new(work_rx);
        let stop = AtomicBool::new(false);
        // Output buffers the writer is done with, for the workers' next batches: on the bench
        // log, faulting in a fresh one per batch, and copying those that outgrew their room,
        // were 7 % of the data step's CPU. Enough for the batches in flight.
        let spare = Spare::new(2 * threads + 4);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let (work_rx, done_tx, spare) = (&work_rx, done_tx.clone(), &spare);
                scope.spawn(move || self.work(file, work_rx, done_tx, spare));
            }
            drop(done_tx);
            let stop = &stop;
            let reader = scope.spawn(move || {
                let mut seq = 0u64;
                read(&mut |item| {
                    seq += 1;
                    !stop.load(Ordering::Relaxed) && work_tx.send((seq, item)).is_ok()
                })
            });
            let written = self.write_in_order(file, write, done_rx, quarantine, &spare);
            if written.is_err() {
                // The writer stopped early: stop the reader, and take whatever it is blocked
                // sending so that it sees the flag (the workers are gone).
                stop.store(true, Ordering::Relaxed);
                if let Ok(rx) = work_rx.lock() {
                    while rx.recv().is_ok() {}
                }
            }
            let read = reader.join().map_err(|_| MigrateError::Internal {
                detail: format!("the reader thread of {} panicked", file.rel),
                state: "nothing was changed".into(),
            })?;
            let bytes_in = read?;
            written.map(|stats| FileStats { bytes_in, ..stats })
        })
    }

    /// Cuts the file into batches of records ([`cut_batches`]); returns the bytes read.
    fn read_batches(
        &self,
        mut src: File,
        path: &Path,
        send: &mut dyn FnMut(Work) -> bool,
    ) -> Result<u64> {
        cut_batches(&mut src, READ_BYTES, self.batch_size, send)
            .map_err(|e| MigrateError::io(format!("cannot read {}", path.display()), e))
    }

    /// A worker: takes batches until the reader is done or the writer has gone.
    fn work(
        &self,
        file: &DataFile,
        work: &Mutex<Receiver<(u64, Work)>>,
        done: SyncSender<(u64, Result<Done>)>,
        spare: &Spare,
    ) {
        loop {
            let next = match work.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok((seq, item)) = next else { return };
            let result = match item {
                Work::Verbatim(bytes) => Ok(Done::Verbatim(bytes)),
                Work::Records(batch) => self
                    .budget
                    .check(&file.rel)
                    .and_then(|()| self.run_hops(&batch, file, spare))
                    .and_then(|(migrated, refusals)| {
                        fault::point("batch")?;
                        Ok(Done::Records {
                            count: batch.places.len(),
                            bytes: batch.bytes.len() as u64,
                            migrated,
                            refusals,
                        })
                    }),
            };
            if done.send((seq, result)).is_err() {
                return;
            }
        }
    }

    /// Writes results in file order; the first error (or refused record, in `fail` mode)
    /// ends the run, which drops the channel and stops the other threads.
    fn write_in_order(
        &self,
        file: &DataFile,
        write: &mut dyn FnMut(&[u8]) -> Result<()>,
        done: Receiver<(u64, Result<Done>)>,
        quarantine: &mut Quarantine,
        spare: &Spare,
    ) -> Result<FileStats> {
        let mut stats = FileStats::default();
        let mut pending = BTreeMap::new();
        let mut next = 1u64;
        for (seq, result) in done {
            pending.insert(seq, result?);
            while let Some(item) = pending.remove(&next) {
                next += 1;
                let bytes = match item {
                    Done::Verbatim(bytes) => Migrated::Host(bytes),
                    Done::Records {
                        count,
                        bytes,
                        migrated,
                        refusals,
                    } => {
                        stats.records += (count - refusals.len()) as u64;
                        self.counters.add(self.observer, bytes, count as u64);
                        self.handle_refusals(refusals, file, quarantine, &mut stats)?;
                        migrated
                    }
                };
                write(bytes.as_slice())?;
                if let Migrated::Spare(buffer) = bytes {
                    spare.give(buffer);
                }
            }
        }
        Ok(stats)
    }

    /// Passes the batch through every data hop; refused records drop out with their place.
    ///
    /// Hops with an edit rule (plugin-api 1.5.0, `rules.data_edits`) share one index of the
    /// batch ([`ViewBatch`]): each record is read and validated once, each hop gets a view of
    /// it and returns edits, which the host checks and applies, and the records are written
    /// once at the end, every byte no hop touched copied as it was. Hops built against older
    /// releases get text, as before: the index is written out for them and read again after.
    fn run_hops(
        &self,
        batch: &Batch,
        file: &DataFile,
        spare: &Spare,
    ) -> Result<(Migrated, Vec<Refusal>)> {
        // A worker's buffers, kept from batch to batch: allocated afresh, each was
        // page-faulted in again for every batch and hop.
        thread_local! {
            static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
        }
        let mut buffers = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
        let result = match self.programs.chain() {
            Some(chain) if self.programs.checked.load(Ordering::Relaxed) => self
                .run_chain(chain, batch, file, &mut buffers, spare)
                .map(|(migrated, refusals, written)| {
                    self.programs.records.fetch_add(written, Ordering::Relaxed);
                    (migrated, refusals)
                }),
            Some(chain) => self.run_both_ways(chain, batch, file, &mut buffers, spare),
            None => self.run_hops_with(batch, file, &mut buffers),
        };
        BUFFERS.with(|b| *b.borrow_mut() = buffers);
        result
    }

    /// The programs' pass and the rules on the same batch: the rules' result, and the programs
    /// are trusted from now on if the two are the same (else dropped).
    fn run_both_ways(
        &self,
        chain: &Chain,
        batch: &Batch,
        file: &DataFile,
        buffers: &mut Buffers,
        spare: &Spare,
    ) -> Result<(Migrated, Vec<Refusal>)> {
        let (by_rules, refused) = self.run_hops_with(batch, file, buffers)?;
        let (by_programs, refused_too, written) =
            self.run_chain(chain, batch, file, buffers, spare)?;
        let words = |r: &[Refusal]| -> Vec<(u64, String, String)> {
            r.iter()
                .map(|r| (r.place, r.hop.clone(), r.error.to_string()))
                .collect()
        };
        let (a, b) = (by_rules.as_slice(), by_programs.as_slice());
        let (said, said_too) = (words(&refused), words(&refused_too));
        if a == b && said == said_too {
            // A batch the programs left wholly to the rules proves nothing: the next one is
            // run both ways too.
            if written > 0 {
                self.programs.checked.store(true, Ordering::Relaxed);
            }
        } else {
            // The first record that differs: the first output line that differs, counted
            // among the records the rules kept (or, when only the refusals differ, the first
            // refusal that does).
            let place = if a != b {
                let line = a
                    .iter()
                    .zip(b)
                    .take_while(|(x, y)| x == y)
                    .filter(|(x, _)| **x == b'\n')
                    .count();
                let gone: std::collections::HashSet<u64> =
                    refused.iter().map(|r| r.place).collect();
                batch.places.iter().filter(|p| !gone.contains(p)).nth(line)
            } else {
                said.iter()
                    .zip(&said_too)
                    .find(|(x, y)| x != y)
                    .map(|(x, _)| &x.0)
            };
            self.programs
                .drop_programs(file, place.copied().unwrap_or(batch.places[0]));
        }
        if let Migrated::Spare(buffer) = by_programs {
            spare.give(buffer);
        }
        Ok((by_rules, refused))
    }

    /// The batch through the compiled programs; the records they leave to the rules go
    /// through the rules, as a batch of their own, and take their places again in the output.
    /// Also returns how many records the programs wrote.
    fn run_chain(
        &self,
        chain: &Chain,
        batch: &Batch,
        file: &DataFile,
        buffers: &mut Buffers,
        spare: &Spare,
    ) -> Result<(Migrated, Vec<Refusal>, u64)> {
        // The SIMD UTF-8 check (`simdutf8`) runs several times faster than `str::from_utf8`
        // on a batch of records; it accepts and refuses exactly the same bytes.
        let Ok(text) = simdutf8::basic::from_utf8(&batch.bytes) else {
            let (migrated, refusals) = self.run_hops_with(batch, file, buffers)?;
            return Ok((migrated, refusals, 0));
        };
        // Room for records twice their size, as migrated records mostly fit (the bench's grow
        // 1.6×): a buffer that grows mid-batch is copied whole.
        let mut out = spare.take(2 * batch.bytes.len());
        let mut left = Vec::new();
        let lines = file.kind == DataKind::Lines;
        for i in 0..batch.places.len() {
            let line = batch.range(i);
            let line = &text[line];
            // A document's record cut with a line break in it is read as two by the rules'
            // path: theirs to decide.
            if (!lines && memchr::memchr(b'\n', line.as_bytes()).is_some())
                || chain.run(line, &mut out, &mut buffers.scratch) == Outcome::ToRule
            {
                left.push((i, out.len()));
            }
        }
        let written = (batch.places.len() - left.len()) as u64;
        if left.is_empty() {
            return Ok((Migrated::Spare(out), Vec::new(), written));
        }
        let mut rest = Batch::default();
        for &(i, _) in &left {
            let start = rest.bytes.len();
            rest.bytes.extend_from_slice(batch.record(i));
            rest.close_record(start, batch.places[i]);
        }
        let (migrated, refusals) = self.run_hops_with(&rest, file, buffers)?;
        let refused: std::collections::HashSet<u64> = refusals.iter().map(|r| r.place).collect();
        let mut by_rules = migrated.as_slice().split_inclusive(|b| *b == b'\n');
        let mut merged = spare.take(out.len() + migrated.as_slice().len());
        let mut at = 0;
        for &(i, offset) in &left {
            merged.extend_from_slice(&out[at..offset]);
            at = offset;
            if !refused.contains(&batch.places[i]) {
                let Some(line) = by_rules.next() else {
                    return Err(MigrateError::Internal {
                        detail: format!(
                            "the hops' rules wrote fewer records than they kept in {}",
                            file.rel
                        ),
                        state: "nothing was changed".into(),
                    });
                };
                merged.extend_from_slice(line);
            }
        }
        merged.extend_from_slice(&out[at..]);
        spare.give(out);
        Ok((Migrated::Spare(merged), refusals, written))
    }

    fn run_hops_with(
        &self,
        batch: &Batch,
        file: &DataFile,
        buffers: &mut Buffers,
    ) -> Result<(Migrated, Vec<Refusal>)> {
        let spare = &mut buffers.spare;
        let mut alive: Vec<usize> = (0..batch.places.len()).collect();
        let mut refusals = Vec::new();
        let mut state = Records::Source;
        let views = !hop_by_hop();
        // The places the batch covers, for the supervisor's account of what a plugin was on.
        let places = batch
            .places
            .first()
            .copied()
            .zip(batch.places.last().copied());
        for hop in self.data_hops() {
            if views && hop.descriptor.rules.data_edits {
                let mut view = match state {
                    Records::View(view) => view,
                    other => {
                        let mut tables = std::mem::take(spare);
                        let text = other.into_bytes(batch, tables.take_text());
                        let (view, unread) = ViewBatch::read_into(text, tables);
                        let unread = unread
                            .into_iter()
                            .map(|(i, e)| RefusedRecord { index: i, error: e });
                        self.drop_refused(hop, file, batch, unread, &mut alive, &mut refusals)?;
                        view
                    }
                };
                let (edits, refused) = view
                    .with_payload(|payload, text_len| {
                        call(self.observer, hop, "data", &file.rel, places, || {
                            hop.client.migrate_view(payload, text_len)
                        })
                    })
                    .map_err(|e| data_failure(hop, file, e))?;
                let unchecked = view.apply(&edits).map_err(|e| {
                    plugin_failure(
                        hop,
                        Path::new(&file.rel),
                        format!("{e}: the plugin is broken"),
                    )
                })?;
                let mut gone: Vec<RefusedRecord> = refused;
                gone.extend(
                    unchecked
                        .into_iter()
                        .map(|(i, e)| RefusedRecord { index: i, error: e }),
                );
                gone.sort_by_key(|r| r.index);
                gone.dedup_by_key(|r| r.index);
                let listed: Vec<(u64, RuleError)> =
                    gone.iter().map(|r| (r.index, r.error.clone())).collect();
                self.drop_refused(hop, file, batch, gone, &mut alive, &mut refusals)?;
                view.remove(&listed);
                state = Records::View(view);
            } else {
                let input = state.into_text(spare);
                let (output, refused) = call(self.observer, hop, "data", &file.rel, places, || {
                    hop.client.migrate_data(input.bytes(batch))
                })
                .map_err(|e| data_failure(hop, file, e))?;
                self.drop_refused(hop, file, batch, refused, &mut alive, &mut refusals)?;
                state = Records::Plugin(output);
            }
        }
        Ok((state.into_migrated(batch, spare), refusals))
    }

    /// Takes the records `hop` refused (indices among those still in the batch) out of `alive`
    /// and lists them with their places.
    fn drop_refused(
        &self,
        hop: &LoadedHop,
        file: &DataFile,
        batch: &Batch,
        refused: impl IntoIterator<Item = RefusedRecord>,
        alive: &mut Vec<usize>,
        refusals: &mut Vec<Refusal>,
    ) -> Result<()> {
        let mut dropped = Vec::new();
        for r in refused {
            let Some(&orig) = alive.get(r.index as usize) else {
                return Err(plugin_failure(
                    hop,
                    Path::new(&file.rel),
                    format!(
                        "refused record #{} of a batch of {}: the plugin is broken",
                        r.index,
                        alive.len()
                    ),
                ));
            };
            dropped.push(r.index as usize);
            refusals.push(Refusal {
                place: batch.places[orig],
                hop: hop_label(hop),
                error: r.error,
                raw: batch.record(orig).to_vec(),
            });
        }
        dropped.sort_unstable();
        dropped.dedup();
        for &i in dropped.iter().rev() {
            alive.remove(i);
        }
        Ok(())
    }

    fn handle_refusals(
        &self,
        mut refusals: Vec<Refusal>,
        file: &DataFile,
        quarantine: &mut Quarantine,
        stats: &mut FileStats,
    ) -> Result<()> {
        refusals.sort_by_key(|r| r.place);
        for r in &refusals {
            self.refuse_wrong_version(file, r)?;
        }
        let refused = self
            .counters
            .refused
            .fetch_add(refusals.len() as u64, Ordering::Relaxed)
            + refusals.len() as u64;
        if refused > self.max_invalid_records && self.on_invalid == OnInvalid::Quarantine {
            return Err(MigrateError::Invalid {
                path: file.rel.clone().into(),
                message: format!(
                    "more than {} records were refused in this run (max_invalid_records): refused, nothing was changed",
                    self.max_invalid_records
                ),
                hint: "that many invalid records usually means the installation is not at the version the run assumes: check its VERSION and --from; if the records really are invalid, raise max_invalid_records in migration_config.toml".into(),
            });
        }
        if let (OnInvalid::Fail, Some(first)) = (self.on_invalid, refusals.first()) {
            return Err(refused_error(file, first));
        }
        for r in refusals {
            quarantine.add(&r)?;
            stats.quarantined += 1;
        }
        Ok(())
    }

    /// A refused record whose `schema_version` is one a hop of this run writes (or newer than
    /// any): the installation is at a later release than the run starts from. The whole run
    /// is refused, naming that release; such a record is never quarantined.
    fn refuse_wrong_version(&self, file: &DataFile, r: &Refusal) -> Result<()> {
        let Some(schema) = serde_json::from_slice::<serde_json::Value>(&r.raw)
            .ok()
            .and_then(|v| v.get("schema_version").and_then(serde_json::Value::as_u64))
        else {
            return Ok(());
        };
        let writers: Vec<(u64, String)> = self
            .hops
            .iter()
            .filter_map(|h| Some((h.descriptor.target_schema_version?, h.to.to_string())))
            .collect();
        let detected = match writers.iter().find(|(s, _)| *s == schema) {
            Some((_, to)) => to.clone(),
            None if writers.iter().all(|(s, _)| *s < schema) && !writers.is_empty() => {
                format!(
                    "a release newer than {}",
                    writers.last().map_or("", |w| w.1.as_str())
                )
            }
            None => return Ok(()),
        };
        Err(MigrateError::WrongVersion {
            file: file.rel.clone().into(),
            place: place_name(file, r.place),
            schema,
            detected,
            from: self.from.clone(),
        })
    }

    /// A `*.json` document, record by record ([`document`]); memory follows the largest
    /// record, not the file. A document that is not well-formed JSON is refused whole, as one
    /// record, before anything is staged.
    fn migrate_document(
        &self,
        root: &Path,
        file: &DataFile,
        staging: &mut Staging,
    ) -> Result<FileStats> {
        let src_path = root.join(&file.rel);
        let read_err = |e| MigrateError::io(format!("cannot read {}", src_path.display()), e);
        let open = || open_source(root, file);
        let mut quarantine = Quarantine::new(self, root, file, staging)?;
        let style = match document::check(open()?) {
            Ok(style) => style,
            Err(e) if e.is_io() => return Err(read_err(e.into())),
            Err(e) => return self.refuse_document(root, file, e, staging, quarantine),
        };
        let records = document::Records::new(open()?).map_err(read_err)?;
        let dst_path = staging.dir().join(&file.rel);
        let write_err =
            |e| MigrateError::io(format!("cannot write staged {}", dst_path.display()), e);
        let mut out = BufWriter::with_capacity(1 << 20, staged_file(root, file, staging)?);
        let shape = records.shape();
        let mut writer = document::Writer::new(shape, style);
        let stats = self.pipeline(
            file,
            |send| self.read_document(records, send).map_err(read_err),
            &mut |migrated| {
                for line in plugin_api::rules::split_records(migrated) {
                    writer.record(line, &mut out).map_err(|e| match e {
                        document::WriteError::Io(e) => write_err(e),
                        invalid => MigrateError::invalid(
                            &file.rel,
                            invalid.to_string(),
                            "report this as a bug in the plugin",
                        ),
                    })?;
                }
                Ok(())
            },
            &mut quarantine,
        )?;
        quarantine.finish(staging)?;
        if shape == document::Shape::Single && stats.quarantined > 0 {
            // The document was its one record, now in the quarantine: nothing stays.
            drop(out);
            staging.remove_file(&file.rel)?;
            staging.remove_at_commit(&file.rel);
            return Ok(stats);
        }
        writer.finish(&mut out).map_err(write_err)?;
        // Synced by the host, as a file of lines is (see `stage::on_disk`).
        out.into_inner().map_err(|e| write_err(e.into_error()))?;
        Ok(stats)
    }

    /// Cuts a document into batches of records, as [`Self::read_batches`] does a file of
    /// lines; returns the bytes read.
    fn read_document<R: std::io::Read>(
        &self,
        mut records: document::Records<R>,
        send: &mut dyn FnMut(Work) -> bool,
    ) -> std::io::Result<u64> {
        let mut batch = Batch::default();
        let mut place = 0;
        loop {
            let start = batch.bytes.len();
            if !records.next_into(&mut batch.bytes)? {
                break;
            }
            place += 1;
            batch.close_record(start, place);
            if batch.is_full(self.batch_size, 0) && !send(Work::Records(batch.take())) {
                return Ok(records.consumed());
            }
        }
        if !batch.places.is_empty() {
            send(Work::Records(batch));
        }
        Ok(records.consumed())
    }

    /// A document that is not one well-formed JSON value goes to the quarantine whole (its
    /// line is where the JSON breaks), and leaves the installation at commit.
    fn refuse_document(
        &self,
        root: &Path,
        file: &DataFile,
        e: serde_json::Error,
        staging: &mut Staging,
        mut quarantine: Quarantine,
    ) -> Result<FileStats> {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut open_source(root, file)?, &mut text).map_err(|e| {
            MigrateError::io(format!("cannot read {}", root.join(&file.rel).display()), e)
        })?;
        let mut stats = FileStats {
            bytes_in: text.len() as u64,
            ..FileStats::default()
        };
        let refusal = Refusal {
            place: e.line() as u64,
            hop: "reading".into(),
            error: RuleError::new(format!("not valid JSON ({e})")),
            raw: text,
        };
        self.handle_refusals(vec![refusal], file, &mut quarantine, &mut stats)?;
        staging.remove_at_commit(&file.rel);
        quarantine.finish(staging)?;
        Ok(stats)
    }
}

/// `TRUSTFORMERS_MIGRATE_HOP_BY_HOP=1`: every hop gets text, one pass per hop (its plugin reads,
/// edits and writes each record), as plugins built before plugin-api 1.5.0 are run. A check of
/// the one-pass path against the hops run one by one (the tests compare the two), and a way
/// around it, should it ever be suspected; never faster.
fn hop_by_hop() -> bool {
    static HOP_BY_HOP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HOP_BY_HOP.get_or_init(|| {
        std::env::var_os("TRUSTFORMERS_MIGRATE_HOP_BY_HOP").is_some_and(|v| v == "1")
    })
}

/// `TRUSTFORMERS_MIGRATE_RULES_ONLY=1`: the hops' rules migrate every record, their declared
/// programs are not used. For checking the programs' pass against the rules (the tests compare
/// the two), and a way around it, should it ever be suspected; never faster.
fn rules_only() -> bool {
    std::env::var_os("TRUSTFORMERS_MIGRATE_RULES_ONLY").is_some_and(|v| v == "1")
}

/// Opens a data file beneath the installation: never through a link, never a FIFO.
/// The staged copy of `file`, created with the mode of the file it will replace (see
/// [`Staging::create_file`]).
fn staged_file(root: &Path, file: &DataFile, staging: &Staging) -> Result<File> {
    let mode = journal::final_mode(&Root::open(root)?, &file.rel)?;
    Ok(staging.create_file(&file.rel, mode)?)
}

/// Cuts a file of lines into batches of at most `batch_size` records (or [`BATCH_BYTES`]);
/// blank lines travel on their own, verbatim. Returns the bytes read. Stops quietly when
/// `send` returns false (the writer has gone: an error ended the run).
///
/// The file is read in pieces of `read_bytes`, and lines are cut where they lie in the piece:
/// reading line by line (`BufReader::read_until`) made a call and a copy per line, a fifth of
/// the data step's CPU beside the hops. The records between two cuts (a blank line, a full
/// batch, the end of the piece) go into the batch in one copy, so every byte is copied once
/// whatever the number of blank lines or the batch size; the start of a line the piece cut
/// off stays for the next piece.
fn cut_batches(
    src: &mut impl Read,
    read_bytes: usize,
    batch_size: usize,
    send: &mut dyn FnMut(Work) -> bool,
) -> std::io::Result<u64> {
    let mut piece = Vec::new();
    let mut batch = Batch::default();
    // How far line ends were looked for in `piece` (past the start of an unfinished line).
    let mut searched = 0;
    let (mut line_no, mut bytes) = (0u64, 0u64);
    loop {
        let n = read_more(src, read_bytes, &mut piece)?;
        bytes += n as u64;
        let at_end = n == 0;
        // Where the next line starts, and the records from `run` to it not yet in the batch.
        let (mut start, mut run) = (0, 0);
        loop {
            let (end, ended) = match memchr::memchr(b'\n', &piece[searched..]) {
                Some(i) => (searched + i + 1, true),
                None if at_end && start < piece.len() => (piece.len(), false),
                None => break,
            };
            line_no += 1;
            let line = &piece[start..end];
            // A record most often starts with `{`: only other lines are read to the end.
            if line[0] != b'{' && line.iter().all(u8::is_ascii_whitespace) {
                batch.bytes.extend_from_slice(&piece[run..start]);
                if (!batch.places.is_empty() && !send(Work::Records(batch.take())))
                    || !send(Work::Verbatim(line.to_vec()))
                {
                    return Ok(bytes);
                }
                run = end;
            } else {
                batch.starts.push(batch.bytes.len() + (start - run));
                batch.places.push(line_no);
                if !ended {
                    // The file's last line, without a line break: it gets one, as every
                    // record written does.
                    batch.bytes.extend_from_slice(&piece[run..end]);
                    batch.bytes.push(b'\n');
                    run = end;
                }
                if batch.is_full(batch_size, end - run) {
                    batch.bytes.extend_from_slice(&piece[run..end]);
                    run = end;
                    if !send(Work::Records(batch.take())) {
                        return Ok(bytes);
                    }
                }
            }
            (start, searched) = (end, end);
        }
        batch.bytes.extend_from_slice(&piece[run..start]);
        if at_end {
            break;
        }
        // The unfinished line moves to the front, once per piece; a line longer than a piece
        // stays where it is until it ends.
        piece.drain(..start);
        searched = piece.len();
    }
    if !batch.places.is_empty() {
        send(Work::Records(batch));
    }
    Ok(bytes)
}

/// Appends up to `n` bytes of `src` to `buf`, read straight into its spare room; 0 at the end
/// of the file.
fn read_more(src: &mut impl Read, n: usize, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(n);
    Read::take(&mut *src, n as u64).read_to_end(buf)
}

fn open_source(root: &Path, file: &DataFile) -> Result<File> {
    Ok(Root::open(root)?.open_read(&file.rel, None)?)
}

fn hop_label(hop: &LoadedHop) -> String {
    format!("{} → {} ({})", hop.from, hop.to, hop.descriptor.name)
}

/// A data rule's call failed as a whole (a record it refuses comes back as a refusal).
fn data_failure(hop: &LoadedHop, file: &DataFile, e: CallError) -> MigrateError {
    plugin_failure(hop, Path::new(&file.rel), e.to_string())
}

fn place_name(file: &DataFile, place: u64) -> String {
    match file.kind {
        DataKind::Lines => format!("{}:{place}", file.rel),
        DataKind::Document => format!("{} (record {place})", file.rel),
    }
}

fn refused_error(file: &DataFile, r: &Refusal) -> MigrateError {
    let field = r
        .error
        .field
        .as_deref()
        .map(|f| format!("field `{f}`: "))
        .unwrap_or_default();
    MigrateError::RecordRefused {
        file: file.rel.clone().into(),
        place: place_name(file, r.place),
        message: format!("{field}{} (hop {})", r.error.message, r.hop),
        hint: "nothing was changed; fix the record, or rerun with --on-invalid quarantine to set refused records aside in data/.quarantine/".into(),
    }
}

/// What the reader hands to the workers.
enum Work {
    Records(Batch),
    /// A blank line, kept where it was.
    Verbatim(Vec<u8>),
}

/// What a worker hands to the writer.
enum Done {
    Records {
        count: usize,
        bytes: u64,
        /// The last hop's output, written as it is (no copy).
        migrated: Migrated,
        refusals: Vec<Refusal>,
    },
    Verbatim(Vec<u8>),
}

/// Where a batch's records are between hops.
enum Records {
    /// The batch as read.
    Source,
    /// A text hop's output, in its buffer.
    Plugin(RVec<u8>),
    /// Text the host wrote.
    Text(Vec<u8>),
    /// The host's index, which edit hops share.
    View(ViewBatch),
}

/// What a worker keeps from batch to batch: the last batch's index, emptied, for the next one.
#[derive(Default)]
struct Buffers {
    spare: ViewBatch,
    scratch: Scratch,
}

impl Records {
    /// As text, for a hop that takes text; a view's index goes back into `spare`.
    fn into_text(self, spare: &mut ViewBatch) -> Records {
        match self {
            Records::View(view) => {
                let mut out = Vec::with_capacity(view.text().len());
                view.write(&mut out);
                *spare = view.recycle();
                Records::Text(out)
            }
            other => other,
        }
    }

    fn bytes<'a>(&'a self, batch: &'a Batch) -> &'a [u8] {
        match self {
            Records::Source => &batch.bytes,
            Records::Plugin(out) => out,
            Records::Text(out) => out,
            Records::View(view) => view.text().as_bytes(),
        }
    }

    /// As owned text, for the index to read; copied into `room` when it must be copied.
    fn into_bytes(self, batch: &Batch, mut room: Vec<u8>) -> Vec<u8> {
        match self {
            Records::Text(out) => out,
            other => {
                room.extend_from_slice(other.bytes(batch));
                room
            }
        }
    }

    fn into_migrated(self, batch: &Batch, spare: &mut ViewBatch) -> Migrated {
        match self.into_text(spare) {
            Records::Plugin(out) => Migrated::Plugin(out),
            Records::Text(out) => Migrated::Host(out),
            other => Migrated::Host(other.bytes(batch).to_vec()),
        }
    }
}

/// Migrated records as the writer gets them: in a plugin's buffer (freed by its allocator), the
/// host's, or one of the host's taken from the data step's [`Spare`] (given back once written:
/// only those, so that buffers nobody takes again are not kept).
enum Migrated {
    Plugin(RVec<u8>),
    Host(Vec<u8>),
    Spare(Vec<u8>),
}

impl Migrated {
    fn as_slice(&self) -> &[u8] {
        match self {
            Migrated::Plugin(out) => out,
            Migrated::Host(out) | Migrated::Spare(out) => out,
        }
    }
}

/// Records in a batch: their bytes (`\n`-terminated) and their places in the source file.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    starts: Vec<usize>,
    places: Vec<u64>,
}

impl Batch {
    /// Takes the batch, leaving an empty one with room for one like it: grown from empty,
    /// each batch was copied about once more by the reallocations.
    fn take(&mut self) -> Batch {
        let next = Batch {
            bytes: Vec::with_capacity(self.bytes.len() + self.bytes.len() / 8),
            starts: Vec::with_capacity(self.starts.len()),
            places: Vec::with_capacity(self.places.len()),
        };
        std::mem::replace(self, next)
    }

    /// Whether the batch should go to the hops: `records` records or [`BATCH_BYTES`], counting
    /// `pending` bytes of its records not yet copied in.
    fn is_full(&self, records: usize, pending: usize) -> bool {
        self.places.len() >= records || self.bytes.len() + pending >= BATCH_BYTES
    }

    /// Adds the record whose bytes were read into `bytes` from `start` on.
    fn close_record(&mut self, start: usize, place: u64) {
        self.starts.push(start);
        if !self.bytes.ends_with(b"\n") {
            self.bytes.push(b'\n');
        }
        self.places.push(place);
    }

    /// Record `i`'s byte range, without its `\n`.
    fn range(&self, i: usize) -> std::ops::Range<usize> {
        let end = self.starts.get(i + 1).copied().unwrap_or(self.bytes.len());
        let end = if end > self.starts[i] && self.bytes[end - 1] == b'\n' {
            end - 1
        } else {
            end
        };
        self.starts[i]..end
    }

    fn record(&self, i: usize) -> &[u8] {
        &self.bytes[self.range(i)]
    }
}

/// `data/.quarantine/<relative path>.rejected.jsonl`, staged; each line is
/// `{"line": N, "hop": "...", "error": "...", "record": "<the original text>"}`. Entries
/// already there from earlier runs are kept.
struct Quarantine {
    rel: String,
    /// The installation's root, where the existing quarantine file is read (confined).
    root: std::path::PathBuf,
    /// The staging folder, where the quarantine file is created confined.
    staged: Root,
    /// The data file's mode without execute bits: the quarantine file's, from its creation.
    mode: u32,
    /// Opened on the first refused record, so a clean file creates nothing.
    out: Option<BufWriter<File>>,
}

impl Quarantine {
    fn new(run: &DataRun, root: &Path, file: &DataFile, staging: &Staging) -> Result<Quarantine> {
        let inside = file
            .rel
            .strip_prefix(&format!("{}/", run.data_rel))
            .unwrap_or(&file.rel);
        let rel = format!("{}/{QUARANTINE}/{inside}.rejected.jsonl", run.data_rel);
        let mode = Root::open(root)?
            .stat(&file.rel)?
            .map_or(0o600, |f| f.mode & 0o666);
        Ok(Quarantine {
            root: root.to_path_buf(),
            staged: Root::open(staging.dir())?,
            mode,
            rel,
            out: None,
        })
    }

    /// Entries are streamed to the staged file: memory stays bounded however many are refused.
    fn add(&mut self, r: &Refusal) -> Result<()> {
        let entry = serde_json::json!({
            "line": r.place,
            "hop": r.hop,
            "error": r.error.to_string(),
            "record": String::from_utf8_lossy(&r.raw),
        });
        let err = |e: std::io::Error| {
            MigrateError::io(format!("cannot write the quarantine {}", self.rel), e)
        };
        let out = match &mut self.out {
            Some(out) => out,
            None => self.out.insert(open_quarantine(
                &self.root,
                &self.rel,
                &self.staged,
                self.mode,
            )?),
        };
        serde_json::to_writer(&mut *out, &entry).map_err(|e| err(e.into()))?;
        out.write_all(b"\n").map_err(err)
    }

    /// Syncs the quarantine file and records its mode (its data file's, which it was created
    /// with) for the commit: a quarantine is never more readable than its source, whatever the
    /// umask.
    fn finish(self, staging: &mut Staging) -> Result<()> {
        let Some(out) = self.out else { return Ok(()) };
        let err = |e: std::io::Error| {
            MigrateError::io(format!("cannot write the quarantine {}", self.rel), e)
        };
        let file = out.into_inner().map_err(|e| err(e.into_error()))?;
        file.sync_all().map_err(err)?;
        staging.set_mode(&self.rel, self.mode);
        Ok(())
    }
}

/// The staged quarantine file, starting with the entries earlier runs left (they are kept).
/// Created with `mode` (its data file's) before a byte is written, whatever the umask.
fn open_quarantine(root: &Path, rel: &str, staged: &Root, mode: u32) -> Result<BufWriter<File>> {
    let err = |e: std::io::Error| MigrateError::io(format!("cannot write the quarantine {rel}"), e);
    staged.create_parents(rel, 0o700)?;
    staged.remove_file(rel)?;
    let mut file = staged.create_new(rel, mode)?;
    let root = Root::open(root)?;
    if root.file_exists(rel)? {
        std::io::copy(&mut root.open_read(rel, None)?, &mut file).map_err(err)?;
    }
    Ok(BufWriter::new(file))
}

#[cfg(test)]
mod tests;
