//! A media that keeps what was *written* apart from what was *persisted*, and simulates a power
//! loss: every cache line written since its last persist is, at random, lost, kept, or torn in
//! half (its first 32 bytes new and the rest old, or the other way round).
//!
//! This is the adversary the ring's durability argument is tested against: x86 guarantees only
//! that an aligned 8-byte store is never torn, and that a line reaches the persistence domain when
//! flushed and drained; lines may also be evicted (persisted) at any earlier moment.

use crate::media::{Media, check_word};
use crate::random::SplitMix;
use std::io;
use std::sync::Mutex;

const LINE_WORDS: usize = 8;

struct State {
    written: Vec<u64>,
    persisted: Vec<u64>,
    dirty: Vec<bool>,
    ops_count: u64,
    crash_at_op: Option<u64>,
    crash_image: Option<Vec<u64>>,
    rng: SplitMix,
}

impl State {
    fn tick(&mut self) -> bool {
        if self.crash_image.is_some() {
            return false;
        }
        self.ops_count += 1;
        if self.crash_at_op == Some(self.ops_count) {
            self.crash_image = Some(self.image_after_power_loss());
            return false;
        }
        true
    }

    fn image_after_power_loss(&mut self) -> Vec<u64> {
        let mut image = self.persisted.clone();
        for line in 0..self.dirty.len() {
            if !self.dirty[line] {
                continue;
            }
            let words = line * LINE_WORDS..((line + 1) * LINE_WORDS).min(image.len());
            let half = line * LINE_WORDS + LINE_WORDS / 2;
            match self.rng.below(4) {
                0 => {} // lost: the persisted (old) contents stay
                1 => image[words.clone()].copy_from_slice(&self.written[words]), // evicted in time
                2 => {
                    // torn: the first half made it
                    for w in words.filter(|&w| w < half) {
                        image[w] = self.written[w];
                    }
                }
                _ => {
                    // torn: the second half made it
                    for w in words.filter(|&w| w >= half) {
                        image[w] = self.written[w];
                    }
                }
            }
        }
        image
    }
}

/// Simulated persistent memory with power loss. All operations take a lock: it is a test tool.
pub struct FaultMedia {
    state: Mutex<State>,
}

impl FaultMedia {
    /// `len` zero bytes, all persisted; `seed` drives the fate of unpersisted lines.
    pub fn new(len: u64, seed: u64) -> FaultMedia {
        Self::from_image(&vec![0; (len / 8) as usize], seed)
    }

    /// Memory whose persisted contents are `image` (for example the image after a power loss).
    pub fn from_image(image: &[u64], seed: u64) -> FaultMedia {
        let lines = image.len().div_ceil(LINE_WORDS);
        FaultMedia {
            state: Mutex::new(State {
                written: image.to_vec(),
                persisted: image.to_vec(),
                dirty: vec![false; lines],
                ops_count: 0,
                crash_at_op: None,
                crash_image: None,
                rng: SplitMix::new(seed),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect(crate::POISONED)
    }

    /// Cuts the power when the `op`-th store or persist from now is attempted: that operation and
    /// every later one has no effect on the persisted image.
    pub fn crash_at_op(&self, op: u64) {
        let mut s = self.state();
        let at = s.ops_count + op;
        s.crash_at_op = Some(at);
    }

    /// The stores and persists done so far.
    pub fn ops_count(&self) -> u64 {
        self.state().ops_count
    }

    /// The persisted image after the power loss, if the power was cut.
    pub fn crash_image(&self) -> Option<Vec<u64>> {
        self.state().crash_image.clone()
    }

    /// Cuts the power now and returns what survives.
    pub fn power_loss(&self) -> Vec<u64> {
        let mut s = self.state();
        if s.crash_image.is_none() {
            let image = s.image_after_power_loss();
            s.crash_image = Some(image);
        }
        s.crash_image.clone().expect("set above")
    }

    /// Flips bit `bit` of the persisted image and of the written contents (media corruption).
    pub fn flip_bit(&self, bit: u64) {
        let mut s = self.state();
        let (word, shift) = ((bit / 64) as usize, bit % 64);
        s.written[word] ^= 1 << shift;
        s.persisted[word] ^= 1 << shift;
    }
}

impl Media for FaultMedia {
    fn len(&self) -> u64 {
        self.state().written.len() as u64 * 8
    }

    fn load(&self, offset: u64) -> u64 {
        let s = self.state();
        let i = check_word(s.written.len() as u64 * 8, offset);
        s.written[i]
    }

    fn store(&self, offset: u64, value: u64) {
        let mut s = self.state();
        let i = check_word(s.written.len() as u64 * 8, offset);
        if s.tick() {
            s.written[i] = value;
            s.dirty[i / LINE_WORDS] = true;
        }
    }

    fn persist(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut s = self.state();
        let total = s.written.len() as u64 * 8;
        assert!(
            offset + len <= total,
            "persist out of bounds: {offset}+{len} > {total}"
        );
        if !s.tick() || len == 0 {
            return Ok(());
        }
        let first = (offset / 64) as usize;
        let last = ((offset + len - 1) / 64) as usize;
        for line in first..=last {
            if s.dirty[line] {
                let words = line * LINE_WORDS..((line + 1) * LINE_WORDS).min(s.written.len());
                let State {
                    written, persisted, ..
                } = &mut *s;
                persisted[words.clone()].copy_from_slice(&written[words]);
                s.dirty[line] = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_lines_survive_and_unpersisted_ones_may_not() {
        let mut lost_some = false;
        for seed in 0..32 {
            let m = FaultMedia::new(256, seed);
            m.store(0, 1);
            m.persist(0, 8).unwrap();
            m.store(64, 2);
            m.store(64 + 40, 3);
            let image = m.power_loss();
            assert_eq!(image[0], 1, "seed {seed}: persisted word lost");
            assert!(image[8] == 0 || image[8] == 2, "seed {seed}");
            assert!(image[13] == 0 || image[13] == 3, "seed {seed}");
            lost_some |= image[8] == 0 || image[13] == 0;
        }
        assert!(lost_some, "no seed lost an unpersisted line");
    }

    #[test]
    fn some_seed_tears_a_line_in_half() {
        let torn = (0..64).any(|seed| {
            let m = FaultMedia::new(128, seed);
            m.store(0, 1);
            m.store(56, 2);
            let image = m.power_loss();
            (image[0] == 1) != (image[7] == 2)
        });
        assert!(torn);
    }

    #[test]
    fn crash_at_op_freezes_the_image() {
        let m = FaultMedia::new(128, 7);
        m.crash_at_op(2);
        m.store(0, 5);
        m.persist(0, 8).unwrap(); // the 2nd op: power is already gone
        m.store(8, 6);
        let image = m.crash_image().expect("crashed");
        assert!(image[0] == 0 || image[0] == 5);
        assert_eq!(image[1], 0);
    }
}
