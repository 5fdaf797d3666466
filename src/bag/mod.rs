//! rosbag2 bags (what `ros2 bag record` writes): a folder with `metadata.yaml` and one or more storage files,
//! MCAP (Jazzy's default; chunks plain, zstd or lz4) or sqlite3 `.db3` (Humble's default), holding CDR messages,
//! optionally zstd-compressed by rosbag2 itself (`--compression-mode file|message --compression-format zstd`).
//! Reads a topic's messages file by file in recorded order, without loading a bag into memory (MCAP files are
//! memory-mapped, sqlite rows are fetched in small batches, a compressed file is streamed to a temporary file
//! first). Pure: no ROS needed ([`crate::cloud::cdr`] decodes PointCloud2).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::cloud::cdr;
pub use crate::cloud::cdr::{POINT_CLOUD2, StampedCloud};

#[derive(Debug, Error)]
pub enum BagError {
    #[error("{path}: {problem}")]
    Bag { path: String, problem: String },
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    #[error("{path}: message {index} on {topic}: {problem}")]
    Message { path: String, topic: String, index: u64, problem: String },
}

pub type Result<T, E = BagError> = std::result::Result<T, E>;

#[derive(Debug, Deserialize)]
struct MetadataFile {
    rosbag2_bagfile_information: Metadata,
}

/// The parts of `metadata.yaml` the reader needs (versions 4–9).
#[derive(Clone, Debug, Deserialize)]
pub struct Metadata {
    pub version: u32,
    pub storage_identifier: String,
    #[serde(default)]
    pub relative_file_paths: Vec<String>,
    #[serde(default)]
    pub topics_with_message_count: Vec<TopicCount>,
    #[serde(default)]
    pub compression_format: String,
    #[serde(default)]
    pub compression_mode: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TopicCount {
    pub topic_metadata: TopicMetadata,
    pub message_count: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TopicMetadata {
    pub name: String,
    #[serde(rename = "type")]
    pub message_type: String,
    #[serde(default)]
    pub serialization_format: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Storage {
    Mcap,
    Sqlite,
}

/// rosbag2's own compression (not MCAP's chunk compression, which the MCAP reader handles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    /// Each storage file is zstd-compressed whole (`name.mcap.zstd`).
    File,
    /// Each message's bytes are zstd-compressed.
    Message,
}

/// An opened bag: metadata read, storage files found.
pub struct Bag {
    pub dir: PathBuf,
    pub metadata: Metadata,
    storage: Storage,
    compression: Compression,
    files: Vec<PathBuf>,
}

fn bag_error(dir: &Path, problem: impl Into<String>) -> BagError {
    BagError::Bag { path: dir.display().to_string(), problem: problem.into() }
}

fn file_error(file: &Path, problem: impl Into<String>) -> BagError {
    BagError::File { path: file.display().to_string(), problem: problem.into() }
}

impl Bag {
    /// Opens a bag folder (or the folder of a `metadata.yaml` given directly).
    pub fn open(path: &Path) -> Result<Self> {
        let dir = if path.file_name().is_some_and(|n| n == "metadata.yaml") {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        if dir.is_file() {
            return Err(bag_error(
                &dir,
                "is a file, not a bag folder: give the folder that holds the bag's metadata.yaml (ros2 bag record writes one)",
            ));
        }
        if !dir.is_dir() {
            return Err(bag_error(&dir, "no such bag folder"));
        }
        let metadata_path = dir.join("metadata.yaml");
        let text = std::fs::read_to_string(&metadata_path)
            .map_err(|e| bag_error(&dir, format!("cannot read metadata.yaml ({e}): not a rosbag2 bag?")))?;
        let metadata = serde_yaml::from_str::<MetadataFile>(&text)
            .map_err(|e| file_error(&metadata_path, format!("not rosbag2 metadata: {e}")))?
            .rosbag2_bagfile_information;
        let storage = match metadata.storage_identifier.as_str() {
            "mcap" => Storage::Mcap,
            "sqlite3" => Storage::Sqlite,
            other => return Err(bag_error(&dir, format!("storage '{other}' is not supported (mcap, sqlite3)"))),
        };
        let compression = match metadata.compression_mode.to_ascii_lowercase().as_str() {
            "" | "none" => Compression::None,
            mode @ ("file" | "message") => {
                if !metadata.compression_format.eq_ignore_ascii_case("zstd") {
                    return Err(bag_error(
                        &dir,
                        format!("{mode} compression '{}' is not supported (zstd)", metadata.compression_format),
                    ));
                }
                if mode == "file" { Compression::File } else { Compression::Message }
            }
            other => return Err(bag_error(&dir, format!("compression mode '{other}' is unknown (file, message)"))),
        };
        if metadata.relative_file_paths.is_empty() {
            return Err(bag_error(&dir, "metadata.yaml lists no storage files"));
        }
        let mut files = Vec::new();
        for relative in &metadata.relative_file_paths {
            // Older bags list paths with the bag folder's name in front.
            let direct = dir.join(relative);
            let file = if direct.is_file() {
                direct
            } else {
                let leaf = Path::new(relative).file_name().map(|n| dir.join(n));
                match leaf.filter(|p| p.is_file()) {
                    Some(p) => p,
                    None => return Err(bag_error(&dir, format!("storage file {relative} is missing"))),
                }
            };
            files.push(file);
        }
        Ok(Self { dir, metadata, storage, compression, files })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn topics(&self) -> &[TopicCount] {
        &self.metadata.topics_with_message_count
    }

    /// Checks that the bag records `topic` with type `message_type`; returns its message count per metadata.
    pub fn check_topic(&self, topic: &str, message_type: &str) -> Result<u64> {
        let found = self.topics().iter().find(|t| t.topic_metadata.name == topic);
        match found {
            None => {
                let available: Vec<String> = self
                    .topics()
                    .iter()
                    .map(|t| format!("{} ({})", t.topic_metadata.name, t.topic_metadata.message_type))
                    .collect();
                Err(bag_error(
                    &self.dir,
                    format!(
                        "no topic {topic}; the bag has: {}",
                        if available.is_empty() { "no topics".into() } else { available.join(", ") }
                    ),
                ))
            }
            Some(t) if t.topic_metadata.message_type != message_type => Err(bag_error(
                &self.dir,
                format!("topic {topic} carries {}, not {message_type}", t.topic_metadata.message_type),
            )),
            Some(t)
                if !t.topic_metadata.serialization_format.is_empty()
                    && t.topic_metadata.serialization_format != "cdr" =>
            {
                Err(bag_error(
                    &self.dir,
                    format!("topic {topic} is serialized as {}, not cdr", t.topic_metadata.serialization_format),
                ))
            }
            Some(t) => Ok(t.message_count),
        }
    }

    /// Calls `f` with each message of `topic` (log time in ns, CDR bytes), file by file in recorded order,
    /// until it breaks. Storage errors name the file.
    pub fn for_each_message(
        &self,
        topic: &str,
        mut f: impl FnMut(u64, &[u8]) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let mut message_bytes = Vec::new();
        let mut f = |time: u64, bytes: &[u8]| -> Result<ControlFlow<()>> {
            if self.compression != Compression::Message {
                return f(time, bytes);
            }
            message_bytes.clear();
            zstd::stream::copy_decode(bytes, &mut message_bytes)
                .map_err(|e| bag_error(&self.dir, format!("a message on {topic} is not valid zstd: {e}")))?;
            f(time, &message_bytes)
        };
        for file in &self.files {
            let decompressed = match self.compression {
                Compression::File => Some(Decompressed::of(file)?),
                _ => None,
            };
            let readable = decompressed.as_ref().map_or(file.as_path(), |d| d.path.as_path());
            let flow = match self.storage {
                Storage::Mcap => mcap_messages(readable, topic, &mut f),
                Storage::Sqlite => sqlite_messages(readable, topic, &mut f),
            }
            // Errors name the bag's file, not the temporary copy.
            .map_err(|e| match e {
                BagError::File { problem, .. } => file_error(file, problem),
                other => other,
            })?;
            if flow.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` with each PointCloud2 of `topic`, decoded; a message that does not decode is an error naming
    /// the file and the message's index.
    pub fn for_each_point_cloud(&self, topic: &str, mut f: impl FnMut(StampedCloud) -> ControlFlow<()>) -> Result<()> {
        self.check_topic(topic, POINT_CLOUD2)?;
        let mut index = 0u64;
        self.for_each_message(topic, |_, bytes| {
            let cloud = cdr::decode_point_cloud(bytes).map_err(|problem| BagError::Message {
                path: self.dir.display().to_string(),
                topic: topic.into(),
                index,
                problem,
            })?;
            index += 1;
            Ok(f(cloud))
        })
    }
}

/// A file-compressed storage file streamed to a temporary file (bags can be larger than memory); removed on drop.
struct Decompressed {
    path: PathBuf,
}

impl Decompressed {
    fn of(file: &Path) -> Result<Self> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("storage");
        let name = format!("inspect3d-{}-{}-{stem}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let decompressed = Self { path: std::env::temp_dir().join(name) };
        let input = std::fs::File::open(file).map_err(|e| file_error(file, e.to_string()))?;
        let output = std::fs::File::create(&decompressed.path)
            .map_err(|e| file_error(&decompressed.path, format!("cannot write the decompressed copy: {e}")))?;
        let mut writer = std::io::BufWriter::new(output);
        zstd::stream::copy_decode(input, &mut writer)
            .map_err(|e| file_error(file, format!("not a readable zstd file: {e}")))?;
        std::io::Write::flush(&mut writer)
            .map_err(|e| file_error(&decompressed.path, format!("cannot write the decompressed copy: {e}")))?;
        Ok(decompressed)
    }
}

impl Drop for Decompressed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn mcap_messages(
    file: &Path,
    topic: &str,
    f: &mut impl FnMut(u64, &[u8]) -> Result<ControlFlow<()>>,
) -> Result<ControlFlow<()>> {
    let handle = std::fs::File::open(file).map_err(|e| file_error(file, e.to_string()))?;
    // SAFETY: the map is read-only and lives only while this function reads it; a bag being rewritten
    // underneath is the same hazard as with any reader and shows up as a decode error.
    let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| file_error(file, e.to_string()))?;
    if !map.starts_with(mcap::MAGIC) {
        return Err(file_error(file, "not a readable MCAP file (no MCAP magic at its start)"));
    }
    let stream =
        mcap::MessageStream::new(&map).map_err(|e| file_error(file, format!("not a readable MCAP file: {e}")))?;
    for message in stream {
        let message = message.map_err(|e| file_error(file, format!("corrupt or truncated MCAP: {e}")))?;
        if message.channel.topic != topic {
            continue;
        }
        if message.channel.message_encoding != "cdr" {
            return Err(file_error(
                file,
                format!("{topic} is encoded as {}, not cdr", message.channel.message_encoding),
            ));
        }
        if f(message.log_time, &message.data)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// Rows fetched per query: small, so a bag of large clouds is never held in memory.
const SQLITE_BATCH: i64 = 8;

fn sqlite_messages(
    file: &Path,
    topic: &str,
    f: &mut impl FnMut(u64, &[u8]) -> Result<ControlFlow<()>>,
) -> Result<ControlFlow<()>> {
    use rusqlite::{Connection, OpenFlags};
    let sql_error = |e: rusqlite::Error| file_error(file, format!("not a readable rosbag2 sqlite3 file: {e}"));
    let connection =
        Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(sql_error)?;
    let topic_id: Option<i64> = {
        let mut statement = connection.prepare("SELECT id FROM topics WHERE name = ?1").map_err(sql_error)?;
        let mut rows = statement.query([topic]).map_err(sql_error)?;
        match rows.next().map_err(sql_error)? {
            Some(row) => Some(row.get(0).map_err(sql_error)?),
            None => None,
        }
    };
    // A split bag's file may hold none of the topic's messages.
    let Some(topic_id) = topic_id else {
        return Ok(ControlFlow::Continue(()));
    };
    let mut statement = connection
        .prepare("SELECT id, timestamp, data FROM messages WHERE topic_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3")
        .map_err(sql_error)?;
    let mut after = i64::MIN;
    loop {
        let mut batch: Vec<(i64, i64, Vec<u8>)> = Vec::new();
        let mut rows = statement.query((topic_id, after, SQLITE_BATCH)).map_err(sql_error)?;
        while let Some(row) = rows.next().map_err(sql_error)? {
            batch.push((
                row.get(0).map_err(sql_error)?,
                row.get(1).map_err(sql_error)?,
                row.get(2).map_err(sql_error)?,
            ));
        }
        let Some(last) = batch.last() else {
            return Ok(ControlFlow::Continue(()));
        };
        after = last.0;
        for (_, timestamp, data) in &batch {
            if f(*timestamp as u64, data)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
    }
}
