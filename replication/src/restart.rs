//! What a memory node finds of an earlier run in the cluster directory. Its region copies and
//! log rings outlive its process on purpose: they are what a restart recovers from
//! (docs/failures.md#a-node-that-comes-back). A node started fresh (`acre node`, no
//! `--restart`) on files that hold data refuses to start on top of them, rather than serve or
//! throw away what they hold; `acre cluster up` restarts such a cluster from them (`--restart`),
//! or brings the node back as a new one.

use acre_engine::addr::{NodeId, RegionId};
use acre_engine::channel::RING_AREA_BASE;
use acre_engine::directory::{node_area_files, node_areas};
use acre_engine::region::AccessKey;
use acre_nvm_log::ring::{DATA_OFFSET, HEAD_OFFSET, RING_MAGIC, TAIL_OFFSET, decode_pos_word};
use acre_txn::config::REPLY_AREA_ID_MIN;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Bytes of a region file read at a time while looking for data.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// The files of one node that hold data someone may need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptData {
    /// Region copies with a byte that is not zero (a claimed block, an object).
    pub regions: Vec<PathBuf>,
    /// Log rings holding records (the head is behind the tail), or whose header does not say.
    pub rings: Vec<PathBuf>,
}

impl KeptData {
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty() && self.rings.is_empty()
    }
}

impl fmt::Display for KeptData {
    /// `2 region copies and 1 log ring hold data, e.g. n2-r2-….region`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            (self.regions.len(), "region copy", "region copies"),
            (self.rings.len(), "log ring", "log rings"),
        ]
        .into_iter()
        .filter(|&(n, _, _)| n > 0)
        .map(|(n, one, many)| format!("{n} {}", if n == 1 { one } else { many }))
        .collect();
        let verb = match self.regions.len() + self.rings.len() {
            1 => "holds",
            _ => "hold",
        };
        write!(f, "{} {verb} data", parts.join(" and "))?;
        if let Some(name) = self
            .regions
            .iter()
            .chain(&self.rings)
            .next()
            .and_then(|path| path.file_name())
        {
            write!(f, ", e.g. {}", name.to_string_lossy())?;
        }
        Ok(())
    }
}

/// Whether an area id is a region copy (the configuration's region ids are below the reply
/// area's) or a ring; the reply and status areas hold nothing that outlives a run.
fn is_region_copy(area: RegionId) -> bool {
    area.0 < REPLY_AREA_ID_MIN
}

fn is_ring(area: RegionId) -> bool {
    area.0 >= RING_AREA_BASE
}

/// The files of `node`'s region copies in `dir` (not its rings, reply or status areas).
pub fn copy_files(dir: &Path, node: NodeId) -> io::Result<Vec<PathBuf>> {
    Ok(node_area_files(dir, node)?
        .into_iter()
        .filter(|(area, _)| is_region_copy(*area))
        .map(|(_, path)| path)
        .collect())
}

/// What `node`'s files in `dir` hold. Only meaningful while no process runs the node.
pub fn kept_data(dir: &Path, node: NodeId) -> io::Result<KeptData> {
    let mut kept = KeptData::default();
    for (area, path) in node_area_files(dir, node)? {
        if is_region_copy(area) && has_a_set_byte(&path)? {
            kept.regions.push(path);
        } else if is_ring(area) && ring_holds_records(&path)? {
            kept.rings.push(path);
        }
    }
    Ok(kept)
}

/// The areas of `node` in `dir` a restart maps again (its region copies and rings, with their
/// keys), after removing those that hold nothing beyond a run (its reply and status areas) and
/// its doorbell, which the restarted process creates anew
/// (docs/failures.md#whole-cluster-restart). Only while no process runs the node.
pub fn areas_to_reopen(dir: &Path, node: NodeId) -> io::Result<Vec<(RegionId, AccessKey)>> {
    let mut kept = Vec::new();
    for (area, key, path) in node_areas(dir, node)? {
        if is_region_copy(area) || is_ring(area) {
            kept.push((area, key));
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    match std::fs::remove_file(acre_engine::directory::doorbell_path(dir, node)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(kept)
}

/// [`kept_data`] of every node that has area files in `dir`, for the nodes whose files hold
/// data, in id order.
pub fn kept_data_in(dir: &Path) -> io::Result<Vec<(NodeId, KeptData)>> {
    let mut found = Vec::new();
    for node in nodes_with_area_files(dir)? {
        let kept = kept_data(dir, node)?;
        if !kept.is_empty() {
            found.push((node, kept));
        }
    }
    Ok(found)
}

/// The nodes that have area files in `dir`, in id order.
pub fn nodes_with_area_files(dir: &Path) -> io::Result<Vec<NodeId>> {
    let mut nodes: Vec<NodeId> = std::fs::read_dir(dir)?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let name = name.to_str()?;
            let (node, _) = name.strip_prefix('n')?.split_once("-r")?;
            name.ends_with(".region")
                .then(|| node.parse::<u16>().ok().map(NodeId))?
        })
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    Ok(nodes)
}

fn has_a_set_byte(path: &Path) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES];
    loop {
        let count = file.read(&mut chunk)?;
        if count == 0 {
            return Ok(false);
        }
        if chunk[..count].iter().any(|&byte| byte != 0) {
            return Ok(true);
        }
    }
}

/// Whether the ring in `path` holds records: its head is behind its tail. A ring whose header
/// is unreadable or damaged counts as holding records (nothing proves it empty); one that was
/// never formatted (no magic: its node stopped while creating it) holds none.
fn ring_holds_records(path: &Path) -> io::Result<bool> {
    let mut header = vec![0u8; DATA_OFFSET as usize];
    let mut file = File::open(path)?;
    if file.read_exact(&mut header).is_err() {
        return Ok(true);
    }
    let word = |offset: u64| {
        let at = offset as usize;
        u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"))
    };
    if word(0) != RING_MAGIC {
        return Ok(header.iter().any(|&byte| byte != 0));
    }
    let head = decode_pos_word(word(HEAD_OFFSET), HEAD_OFFSET);
    let tail = decode_pos_word(word(TAIL_OFFSET), TAIL_OFFSET);
    Ok(!matches!((head, tail), (Ok(head), Ok(tail)) if head == tail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_nvm_log::ring::encode_pos_word;

    fn ring_file(dir: &Path, name: &str, head: u64, tail: u64) -> PathBuf {
        let mut bytes = vec![0u8; 4096];
        bytes[..8].copy_from_slice(&RING_MAGIC.to_le_bytes());
        let at = |offset: u64| offset as usize..offset as usize + 8;
        bytes[at(HEAD_OFFSET)].copy_from_slice(&encode_pos_word(head).to_le_bytes());
        bytes[at(TAIL_OFFSET)].copy_from_slice(&encode_pos_word(tail).to_le_bytes());
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn regions_with_a_set_byte_and_rings_with_records_are_kept_data() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut written = vec![0u8; 3 * SCAN_CHUNK_BYTES];
        written[2 * SCAN_CHUNK_BYTES + 17] = 1;
        std::fs::write(d.join("n2-r2-00aa.region"), &written).unwrap();
        std::fs::write(d.join("n2-r3-00bb.region"), vec![0u8; 8192]).unwrap();
        // The reply area holds replies only for as long as a run lasts.
        std::fs::write(d.join("n2-r1879048192-00cc.region"), [7u8; 4096]).unwrap();
        let busy = ring_file(d, "n2-r2147483748-00dd.region", 64, 128);
        ring_file(d, "n2-r2147483649-00ee.region", 96, 96);
        std::fs::write(d.join("n2-r2147483650-00ff.region"), vec![0u8; 4096]).unwrap();
        let damaged = d.join("n2-r2147483651-0011.region");
        let mut bytes = std::fs::read(&busy).unwrap();
        bytes[HEAD_OFFSET as usize] ^= 1;
        std::fs::write(&damaged, bytes).unwrap();
        std::fs::write(d.join("n3-r2-0022.region"), [1u8; 4096]).unwrap();

        let kept = kept_data(d, NodeId(2)).unwrap();
        assert_eq!(kept.regions, [d.join("n2-r2-00aa.region")]);
        assert_eq!(kept.rings, [damaged, busy], "in area id order");
        assert_eq!(
            kept.to_string(),
            "1 region copy and 2 log rings hold data, e.g. n2-r2-00aa.region"
        );
        let all = kept_data_in(d).unwrap();
        let nodes: Vec<NodeId> = all.iter().map(|(node, _)| *node).collect();
        assert_eq!(nodes, [NodeId(2), NodeId(3)]);
        assert!(kept_data(d, NodeId(4)).unwrap().is_empty());
    }
}
