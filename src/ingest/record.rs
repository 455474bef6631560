//! Recording accepted OTLP requests with their arrival times, for `flagguard replay`.
//!
//! Format: a file is a sequence of records `u64 arrival ms (LE) · u8 signal (1 traces, 2 logs) ·
//! u32 length (LE) · protobuf bytes` (JSON requests are re-encoded as protobuf). Files are
//! named `flagguard-<first arrival ms>.otlprec`, rotated at `file_bytes`; the oldest are deleted
//! beyond `max_bytes`. Recording is best-effort and never slows ingest: requests go through a
//! bounded queue to a writer thread, and what does not fit is counted as dropped.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use crate::time::Timestamp;

/// Which export service a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces = 1,
    Logs = 2,
}

/// One recorded request.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub arrival: Timestamp,
    pub signal: Signal,
    pub protobuf: Vec<u8>,
}

/// Recorder settings.
#[derive(Clone, Debug)]
pub struct RecordSettings {
    pub dir: PathBuf,
    pub file_bytes: u64,
    pub max_bytes: u64,
}

/// The handle ingest writes to.
pub struct Recorder {
    tx: SyncSender<Record>,
    pub dropped: Arc<AtomicU64>,
    /// Bytes queued for the writer: bounded by `MAX_QUEUED_BYTES` whatever the request sizes.
    queued: Arc<AtomicU64>,
}

/// Requests waiting for the disk beyond this are dropped (and counted), never kept in memory.
const MAX_QUEUED_BYTES: u64 = 256 << 20;

impl Recorder {
    /// Starts the writer thread.
    pub fn start(settings: RecordSettings) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(&settings.dir)?;
        let (tx, rx) = sync_channel::<Record>(4096);
        let dropped = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicU64::new(0));
        let written = queued.clone();
        std::thread::Builder::new().name("flagguard-recorder".into()).spawn(move || {
            let mut writer: Option<(BufWriter<File>, u64)> = None;
            for record in rx {
                written.fetch_sub(record.protobuf.len() as u64, Ordering::Relaxed);
                if writer.as_ref().is_none_or(|(_, size)| *size >= settings.file_bytes) {
                    if let Some((mut w, _)) = writer.take() {
                        let _ = w.flush();
                    }
                    let path = settings.dir.join(format!("flagguard-{}.otlprec", record.arrival.as_millis()));
                    match File::create(&path) {
                        Ok(f) => writer = Some((BufWriter::new(f), 0)),
                        Err(e) => {
                            tracing::error!(error = %e, path = %path.display(), "cannot create a recording file; recording stops");
                            return;
                        }
                    }
                    prune(&settings.dir, settings.max_bytes);
                }
                if let Some((w, size)) = writer.as_mut() {
                    let header =
                        [record.arrival.as_millis().to_le_bytes().as_slice(), &[record.signal as u8], &(record.protobuf.len() as u32).to_le_bytes()].concat();
                    if w.write_all(&header).and_then(|_| w.write_all(&record.protobuf)).and_then(|_| w.flush()).is_err() {
                        tracing::error!("cannot write the recording; recording stops");
                        return;
                    }
                    *size += (header.len() + record.protobuf.len()) as u64;
                }
            }
        })?;
        Ok(Recorder { tx, dropped, queued })
    }

    /// Queues a request; never blocks.
    pub fn record(&self, record: Record) {
        let len = record.protobuf.len() as u64;
        if self.queued.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(record) {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Deletes the oldest recording files while the directory holds more than `max_bytes`.
fn prune(dir: &Path, max_bytes: u64) {
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "otlprec"))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    for (path, len) in files {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

/// The largest record accepted when reading (the receivers' body limit is 20 MiB by default).
const MAX_RECORD: usize = 256 << 20;

/// Reads every record of the given files (each file in order; files in the order given).
pub fn read(paths: &[PathBuf]) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    for path in paths {
        let mut r = BufReader::new(File::open(path)?);
        loop {
            let mut header = [0u8; 13];
            match r.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let arrival = Timestamp(u64::from_le_bytes(header[0..8].try_into().unwrap_or_default()));
            let signal = match header[8] {
                1 => Signal::Traces,
                2 => Signal::Logs,
                other => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: unknown signal {other}", path.display()))),
            };
            let len = u32::from_le_bytes(header[9..13].try_into().unwrap_or_default()) as usize;
            if len > MAX_RECORD {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: record of {len} bytes (corrupt?)", path.display())));
            }
            let mut protobuf = Vec::with_capacity(len);
            (&mut r).take(len as u64).read_to_end(&mut protobuf)?;
            // A file cut mid-record (a crash, or the live file) ends at its last whole record.
            if protobuf.len() < len {
                break;
            }
            out.push(Record { arrival, signal, protobuf });
        }
    }
    Ok(out)
}

/// Writes `records` as one recording file (fixtures, tools).
pub fn write_file(path: &Path, records: &[Record]) -> std::io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    for r in records {
        w.write_all(&r.arrival.as_millis().to_le_bytes())?;
        w.write_all(&[r.signal as u8])?;
        w.write_all(&(r.protobuf.len() as u32).to_le_bytes())?;
        w.write_all(&r.protobuf)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_rotate_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::start(RecordSettings { dir: dir.path().into(), file_bytes: 100, max_bytes: 250 }).unwrap();
        for i in 0..10u64 {
            recorder.record(Record {
                arrival: Timestamp(1000 + i),
                signal: if i % 2 == 0 { Signal::Traces } else { Signal::Logs },
                protobuf: vec![i as u8; 40],
            });
        }
        drop(recorder);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut paths;
        loop {
            paths = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
            paths.sort();
            let total: u64 = paths.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
            if read(&paths).map(|r| r.last().map(|x| x.arrival) == Some(Timestamp(1009))).unwrap_or(false) || std::time::Instant::now() > deadline {
                assert!(total <= 250 + 53 * 2, "pruned: {total}");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let records = read(&paths).unwrap();
        assert!(paths.len() >= 2, "rotated");
        assert!(records.len() < 10, "the oldest file was pruned");
        assert_eq!(records.last().unwrap(), &Record { arrival: Timestamp(1009), signal: Signal::Logs, protobuf: vec![9; 40] });
    }
}
