//! Maglev consistent hashing: the lookup table the XDP program indexes with a flow hash.
//!
//! This is Pseudocode 1 of the Maglev paper (Eisenbud et al., NSDI 2016, §3.4), with weights. It is pure: no I/O, no
//! clock, no randomness. The data-plane module writes the returned table into the `MAGLEV` map; nothing here knows
//! about maps.
//!
//! # Why every node gets the same table
//! All nodes of a VRRP group build their tables independently, and after a failover the new active node must send
//! each existing flow to the backend the old one chose. So the table is a function of the backend set alone:
//! - backends are sorted by [`MaglevBackend::key`] before the population loop, so input order does not matter;
//! - `offset` and `skip` come from SipHash-2-4 with fixed, published keys ([`OFFSET_KEY`], [`SKIP_KEY`]) over the
//!   UTF-8 bytes of the key; SipHash is specified to the bit, unlike std's `RandomState` (random per process) or
//!   `DefaultHasher` (its algorithm may change between Rust releases).
//!
//! Changing either hash key, the key text, the weight scheme or the tie-breaking order changes the table, so it
//! must be treated as a wire-format change: nodes of mixed versions would disagree.
//!
//! # Weights
//! The paper only says weights alter "the relative frequency of the backends' turns". We use Katran's MaglevHashV2
//! scheme because it gives proportional shares: in every round each backend adds its weight to a credit, and takes a
//! turn (claims its next preferred empty slot) only when its credit has reached the largest weight, which it then
//! pays back. A backend of weight `w` thus takes `w / max_weight` turns per round, and gets `w / Σw` of the slots to
//! within about one slot. With equal weights every backend takes a turn every round, which is exactly Pseudocode 1.
//! (Katran's V1 scheme, "take `w` slots in the first turn, then one per turn", does not give proportional shares.)
//!
//! # Cost
//! Permutations are never materialised (that would be `N × M` words); each backend keeps only its next candidate
//! slot. Time is O(M log M) on average (paper §3.4), memory is the table itself (4 × M bytes). A start or reload of
//! many services goes through a [`Builder`], which populates each distinct backend set once: 64 instances in front
//! of the same backends cost one population run per set, not one per service.
use std::collections::HashSet;
use std::fmt;

use lb_common::{MAGLEV_M, NO_BACKEND};

/// SipHash key (k0, k1) of the `offset` hash: the ASCII bytes `"xvip maglev offs"` read as two little-endian u64.
pub const OFFSET_KEY: (u64, u64) = key_from_ascii(b"xvip maglev offs");
/// SipHash key (k0, k1) of the `skip` hash: the ASCII bytes `"xvip maglev skip"` read as two little-endian u64.
pub const SKIP_KEY: (u64, u64) = key_from_ascii(b"xvip maglev skip");

/// One backend as the table builder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// The value written into the backend's slots: its index in the data plane's `BACKENDS` array. It is local to a
    /// node and never hashed, so two nodes may number their backends differently and still agree on the flows.
    pub id: u32,
    /// What identifies the backend on every node; only this is hashed. Use the canonical `address:port` text
    /// (`format!("{ip}:{port}")`, e.g. `10.0.0.11:6443`) so every node spells the same backend the same way.
    pub key: String,
    /// Relative share of the slots, 1..=255. A backend of weight 0 takes no slots, exactly as if it were absent
    /// (IPVS's "weight 0 quiesces a backend").
    pub weight: u8,
}

/// Why a table could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size must be prime so that every `skip` in 1..M is coprime with M and each backend's permutation
    /// visits every slot; otherwise the population loop could spin on a full sub-cycle.
    SizeNotPrime { m: u32 },
    /// Two backends share a key: they would have the same permutation, and which one wins each slot would depend on
    /// input order, so nodes could disagree.
    DuplicateKey { key: String, ids: (u32, u32) },
    /// Two backends share an id: their slots could not be told apart and the shares would be wrong.
    DuplicateId { id: u32, keys: (String, String) },
    /// `NO_BACKEND` (u32::MAX) marks an empty slot; a backend cannot use it as its id.
    ReservedId { key: String },
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SizeNotPrime { m } => write!(f, "Maglev table size must be a prime, got {m}"),
            Self::DuplicateKey { key, ids } => {
                write!(f, "backend {key} appears twice (ids {} and {}); keys must be unique", ids.0, ids.1)
            }
            Self::DuplicateId { id, keys } => {
                write!(f, "backends {} and {} have the same id {id}; ids must be unique", keys.0, keys.1)
            }
            Self::ReservedId { key } => {
                write!(f, "backend {key} has id {NO_BACKEND}, which is reserved for empty slots (NO_BACKEND)")
            }
        }
    }
}

impl std::error::Error for MaglevError {}

/// Builds the lookup table of [`MAGLEV_M`] slots (the size the data plane uses).
///
/// # Errors
/// As [`build`].
pub fn build_default(backends: &[MaglevBackend]) -> Result<Vec<u32>, MaglevError> {
    build(backends, MAGLEV_M)
}

/// Builds a lookup table of `m` slots, each holding the [`MaglevBackend::id`] of the backend that serves the flows
/// hashing to it. With no backend of non-zero weight, every slot is [`NO_BACKEND`] so the service fails fast.
///
/// The result depends only on the set of `(key, weight, id)` triples, not on their order.
///
/// # Errors
/// [`MaglevError`] when `m` is not prime, or when a key or id is repeated, or an id is `NO_BACKEND`. Nothing is
/// built in that case.
pub fn build(backends: &[MaglevBackend], m: u32) -> Result<Vec<u32>, MaglevError> {
    let sorted = checked(backends, m)?;
    let turns: Vec<Permutation> = sorted.iter().filter(|b| b.weight > 0).map(|b| Permutation::of(b, m)).collect();
    Ok(populate(&turns, m))
}

/// `backends` sorted by key, once [`build`]'s rules hold (prime size, unique keys and ids, no reserved id).
fn checked(backends: &[MaglevBackend], m: u32) -> Result<Vec<&MaglevBackend>, MaglevError> {
    if !is_prime(m) {
        return Err(MaglevError::SizeNotPrime { m });
    }
    let mut sorted: Vec<&MaglevBackend> = backends.iter().collect();
    // Stable, so a duplicate key is reported with its ids in input order.
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for pair in sorted.windows(2) {
        if pair[0].key == pair[1].key {
            return Err(MaglevError::DuplicateKey { key: pair[0].key.clone(), ids: (pair[0].id, pair[1].id) });
        }
    }
    let mut seen = HashSet::with_capacity(sorted.len());
    for b in &sorted {
        if b.id == NO_BACKEND {
            return Err(MaglevError::ReservedId { key: b.key.clone() });
        }
        if !seen.insert(b.id) {
            let first = sorted.iter().find(|o| o.id == b.id).map_or(&b.key, |o| &o.key);
            return Err(MaglevError::DuplicateId { id: b.id, keys: (first.clone(), b.key.clone()) });
        }
    }
    Ok(sorted)
}

/// How many distinct backend sets a [`Builder`] remembers (each costs 4 × M bytes, 256 KiB at [`MAGLEV_M`]).
pub const BUILDER_MEMORY: usize = 8;

/// Builds the tables of many services in a row (a start, a reload, a batch of updates) and populates each distinct
/// backend set only once. Which backend owns which slot depends only on the backends' keys and weights, never on
/// their ids; so services with the same backends (several VIPs or instances in front of one set of servers) share
/// one population run, and each gets that table with its own ids written in. Every result equals [`build`]'s.
///
/// It remembers the last [`BUILDER_MEMORY`] sets; drop it when the batch is done.
pub struct Builder {
    m: u32,
    populated: usize,
    /// The last sets populated, oldest first.
    built: Vec<(BackendSet, Vec<u32>)>,
}

/// (key, weight) of the backends that take slots, in key order; a table built for a set holds each slot's
/// backend as its position in this list.
type BackendSet = Vec<(String, u8)>;

impl Builder {
    /// A builder of tables of `m` slots.
    pub fn new(m: u32) -> Self {
        Builder { m, populated: 0, built: Vec::new() }
    }

    /// As [`build`]`(backends, m)`.
    ///
    /// # Errors
    /// As [`build`].
    pub fn build(&mut self, backends: &[MaglevBackend]) -> Result<Vec<u32>, MaglevError> {
        let members: Vec<&MaglevBackend> = checked(backends, self.m)?.into_iter().filter(|b| b.weight > 0).collect();
        let set: BackendSet = members.iter().map(|b| (b.key.clone(), b.weight)).collect();
        let positions = match self.built.iter().position(|(s, _)| *s == set) {
            Some(i) => &self.built[i].1,
            None => {
                // Ids are only written, never hashed: populate with each backend's position as its id.
                let turns: Vec<Permutation> = members
                    .iter()
                    .zip(0u32..)
                    .map(|(b, position)| Permutation { id: position, ..Permutation::of(b, self.m) })
                    .collect();
                let table = populate(&turns, self.m);
                self.populated += 1;
                if self.built.len() == BUILDER_MEMORY {
                    self.built.remove(0);
                }
                self.built.push((set, table));
                &self.built[self.built.len() - 1].1
            }
        };
        Ok(positions.iter().map(|&p| members.get(p as usize).map_or(NO_BACKEND, |b| b.id)).collect())
    }

    /// How many tables were populated (not taken from memory) so far.
    pub fn populated(&self) -> usize {
        self.populated
    }
}

/// Fraction of slots (0.0..=1.0) that map to a different backend in `new` than in `old`: the share of flows
/// without connection-table state that would move. Tables of different sizes hash flows differently, so every
/// slot counts as moved (1.0); two empty tables give 0.0.
pub fn moved_share(old: &[u32], new: &[u32]) -> f64 {
    if old.len() != new.len() {
        return 1.0;
    }
    if old.is_empty() {
        return 0.0;
    }
    let moved = old.iter().zip(new).filter(|(a, b)| a != b).count();
    moved as f64 / old.len() as f64
}

/// Trial division; at most 65536 divisions for a u32, done once per table build.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// A backend's preference list, `(offset + j·skip) mod M` for j = 0, 1, ..., kept as its parameters only.
#[derive(Clone, Copy, Debug)]
struct Permutation {
    offset: u32,
    /// In 1..M; coprime with M because M is prime.
    skip: u32,
    weight: u32,
    id: u32,
}

impl Permutation {
    fn of(backend: &MaglevBackend, m: u32) -> Self {
        let bytes = backend.key.as_bytes();
        let m64 = u64::from(m);
        let h1 = siphash24(OFFSET_KEY, bytes);
        let h2 = siphash24(SKIP_KEY, bytes);
        // Both results are < m <= u32::MAX, so the narrowing cannot lose bits. For m = 2 the skip is 1.
        let offset = (h1 % m64) as u32;
        let skip = (h2 % (m64 - 1) + 1) as u32;
        Self { offset, skip, weight: u32::from(backend.weight), id: backend.id }
    }
}

/// Pseudocode 1 with Katran V2 weights: backends take turns, in the given order, at a frequency proportional to
/// their weight; a turn claims the backend's next preferred slot that is still empty. Every weight must be > 0 and
/// `m` prime, or the loop would not terminate.
fn populate(perms: &[Permutation], m: u32) -> Vec<u32> {
    let mut table = vec![NO_BACKEND; m as usize];
    let Some(max_weight) = perms.iter().map(|p| p.weight).max() else {
        return table;
    };
    let m = u64::from(m);
    let mut next: Vec<u64> = perms.iter().map(|p| u64::from(p.offset)).collect();
    let mut credit = vec![0u32; perms.len()];
    let mut filled = 0u64;
    loop {
        for (i, p) in perms.iter().enumerate() {
            credit[i] += p.weight;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let skip = u64::from(p.skip);
            let mut slot = next[i];
            while table[slot as usize] != NO_BACKEND {
                slot = step(slot, skip, m);
            }
            table[slot as usize] = p.id;
            next[i] = step(slot, skip, m);
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// `(slot + skip) mod m` for `slot`, `skip` < `m`: one subtraction instead of a division, which dominated the
/// population loop (it runs about M·ln M times per build).
#[inline]
fn step(slot: u64, skip: u64, m: u64) -> u64 {
    let next = slot + skip;
    if next >= m { next - m } else { next }
}

const fn key_from_ascii(key: &[u8; 16]) -> (u64, u64) {
    let mut k0 = [0u8; 8];
    let mut k1 = [0u8; 8];
    let mut i = 0;
    while i < 8 {
        k0[i] = key[i];
        k1[i] = key[i + 8];
        i += 1;
    }
    (u64::from_le_bytes(k0), u64::from_le_bytes(k1))
}

/// SipHash-2-4 (Aumasson and Bernstein, 2012) with a 128-bit key, 64-bit output.
fn siphash24((k0, k1): (u64, u64), data: &[u8]) -> u64 {
    let mut v = [
        0x736f_6d65_7073_6575 ^ k0,
        0x646f_7261_6e64_6f6d ^ k1,
        0x6c79_6765_6e65_7261 ^ k0,
        0x7465_6462_7974_6573 ^ k1,
    ];
    let chunks = data.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let m = u64::from_le_bytes(word);
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    // The last word holds the remaining bytes and, in its top byte, the message length mod 256.
    let mut last = (data.len() as u64 & 0xff) << 56;
    for (i, byte) in tail.iter().enumerate() {
        last |= u64::from(*byte) << (8 * i);
    }
    v[3] ^= last;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const M: u32 = MAGLEV_M;

    fn backend(i: u32, weight: u8) -> MaglevBackend {
        MaglevBackend { id: i, key: format!("10.0.{}.{}:6443", i / 250, i % 250 + 1), weight }
    }

    fn backends(n: u32) -> Vec<MaglevBackend> {
        (0..n).map(|i| backend(i, 1)).collect()
    }

    fn counts(table: &[u32]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for id in table {
            *counts.entry(*id).or_insert(0) += 1;
        }
        counts
    }

    /// Deterministic shuffle (xorshift-driven Fisher-Yates), so the test needs no `rand`.
    fn shuffled<T: Clone>(items: &[T], mut seed: u64) -> Vec<T> {
        let mut out = items.to_vec();
        for i in (1..out.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        out
    }

    #[test]
    fn siphash_matches_the_reference_vector() {
        // The SipHash paper, appendix A: key 00..0f, message 00..0e, result a129ca6149be45e5.
        let key: Vec<u8> = (0..16).collect();
        let msg: Vec<u8> = (0..15).collect();
        let mut k = [0u8; 16];
        k.copy_from_slice(&key);
        assert_eq!(siphash24(key_from_ascii(&k), &msg), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn siphash_matches_std_siphasher_for_every_tail_length() {
        #[expect(deprecated, reason = "std's SipHasher is SipHash-2-4: an independent implementation to compare")]
        fn reference(key: (u64, u64), data: &[u8]) -> u64 {
            use std::hash::Hasher;
            let mut h = std::hash::SipHasher::new_with_keys(key.0, key.1);
            h.write(data);
            h.finish()
        }
        let data: Vec<u8> = (0..40u8).map(|b| b.wrapping_mul(37)).collect();
        for len in 0..data.len() {
            assert_eq!(siphash24(OFFSET_KEY, &data[..len]), reference(OFFSET_KEY, &data[..len]), "len {len}");
        }
    }

    #[test]
    fn key_hashes_are_pinned_across_versions() {
        // The table is a cross-node wire format: if this changes, nodes of different versions disagree on flows.
        let key = "10.0.0.11:6443".to_string();
        let p = Permutation::of(&MaglevBackend { id: 0, key, weight: 1 }, M);
        assert_eq!((p.offset, p.skip), (33004, 56660));
        // The population order and weight scheme too: a digest of a small weighted table.
        let input: Vec<MaglevBackend> = (0..3).map(|i| backend(i, i as u8 + 1)).collect();
        let table = build(&input, 251).expect("valid input");
        let bytes: Vec<u8> = table.iter().flat_map(|id| id.to_le_bytes()).collect();
        assert_eq!(siphash24(OFFSET_KEY, &bytes), 14_010_196_950_346_061_876);
    }

    #[test]
    fn populate_reproduces_table_1_of_the_paper() {
        // Maglev paper Table 1: M = 7, B0 (offset 3, skip 4), B1 (0, 2), B2 (3, 1).
        let perm = |id, offset, skip| Permutation { offset, skip, weight: 1, id };
        let all = [perm(0, 3, 4), perm(1, 0, 2), perm(2, 3, 1)];
        assert_eq!(populate(&all, 7), [1, 0, 1, 0, 2, 2, 0]);
        // After B1 is removed only slot 6 changes among the slots B1 did not own.
        assert_eq!(populate(&[all[0], all[2]], 7), [0, 0, 0, 0, 2, 2, 2]);
    }

    #[test]
    fn empty_input_fills_every_slot_with_no_backend() {
        let table = build(&[], M).expect("prime size");
        assert_eq!(table.len(), M as usize);
        assert!(table.iter().all(|&s| s == NO_BACKEND));
    }

    #[test]
    fn zero_weight_backends_take_no_slots() {
        let mut with_zero = backends(3);
        with_zero.push(backend(3, 0));
        assert_eq!(build(&with_zero, M), build(&backends(3), M));
        let only_zero = build(&[backend(7, 0)], M).expect("prime size");
        assert!(only_zero.iter().all(|&s| s == NO_BACKEND));
    }

    #[test]
    fn size_must_be_prime() {
        for m in [0, 1, 4, 65536, 65535, u32::MAX] {
            assert_eq!(build(&backends(2), m), Err(MaglevError::SizeNotPrime { m }), "m = {m}");
        }
        for m in [2, 3, 7, 251, 16381, 65537] {
            assert_eq!(build(&backends(2), m).map(|t| t.len()), Ok(m as usize), "m = {m}");
        }
    }

    #[test]
    fn is_prime_agrees_with_a_sieve_and_known_primes() {
        let limit = 10_000usize;
        let mut sieve = vec![true; limit];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..limit {
            if sieve[i] {
                for j in (i * i..limit).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (n, &prime) in sieve.iter().enumerate() {
            assert_eq!(is_prime(n as u32), prime, "{n}");
        }
        assert!(is_prime(4_294_967_291)); // the largest u32 prime
        assert!(!is_prime(4_294_967_295));
        assert!(!is_prime(65_537 * 65_521)); // both factors prime, near the square root of u32::MAX
    }

    #[test]
    fn duplicate_keys_ids_and_the_reserved_id_are_refused() {
        let mut dup_key = backends(3);
        dup_key[2].key = dup_key[0].key.clone();
        assert_eq!(build(&dup_key, M), Err(MaglevError::DuplicateKey { key: dup_key[0].key.clone(), ids: (0, 2) }));
        let mut dup_id = backends(3);
        dup_id[2].id = 0;
        assert!(matches!(build(&dup_id, M), Err(MaglevError::DuplicateId { id: 0, .. })));
        let mut reserved = backends(3);
        reserved[1].id = NO_BACKEND;
        assert_eq!(build(&reserved, M), Err(MaglevError::ReservedId { key: reserved[1].key.clone() }));
    }

    #[test]
    fn every_backend_gets_its_fair_share_within_one_percent() {
        for n in 1..=100 {
            let table = build(&backends(n), M).expect("valid input");
            let counts = counts(&table);
            assert_eq!(counts.len(), n as usize, "N = {n}: every backend has slots, no slot is empty");
            let fair = f64::from(M) / f64::from(n);
            for (id, &count) in &counts {
                let error = (count as f64 - fair).abs() / fair;
                assert!(error <= 0.01, "N = {n}: backend {id} has {count} slots, fair share {fair:.1}");
            }
        }
    }

    #[test]
    fn weighted_shares_are_proportional_to_weight() {
        for n in [2u32, 5, 10, 50, 100] {
            // Weights 1..=255 spread over the backends, including both extremes.
            let input: Vec<MaglevBackend> = (0..n).map(|i| backend(i, (1 + i * 254 / (n - 1)) as u8)).collect();
            let total: u32 = input.iter().map(|b| u32::from(b.weight)).sum();
            let counts = counts(&build(&input, M).expect("valid input"));
            for b in &input {
                let fair = f64::from(M) * f64::from(b.weight) / f64::from(total);
                let count = counts.get(&b.id).copied().unwrap_or(0) as f64;
                // One turn more or less than the exact share is inherent in whole slots.
                let allowed = (0.01 * fair).max(1.0);
                assert!(
                    (count - fair).abs() <= allowed,
                    "N = {n}: backend {} (weight {}) has {count} slots, fair share {fair:.1}",
                    b.id,
                    b.weight
                );
            }
        }
    }

    #[test]
    fn weight_two_gets_twice_the_slots() {
        let mut input = backends(3);
        input[1].weight = 2;
        let counts = counts(&build(&input, M).expect("valid input"));
        let ratio = counts[&1] as f64 / counts[&0] as f64;
        assert!((ratio - 2.0).abs() < 0.01, "weight 2 got {ratio:.4}x the slots of weight 1 ({counts:?})");
        assert!((counts[&0] as f64 / counts[&2] as f64 - 1.0).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn table_does_not_depend_on_input_order() {
        for n in [2u32, 3, 10, 100] {
            let input: Vec<MaglevBackend> = (0..n).map(|i| backend(i, (i % 4 + 1) as u8)).collect();
            let reference = build(&input, M).expect("valid input");
            let mut reversed = input.clone();
            reversed.reverse();
            assert_eq!(build(&reversed, M).as_ref(), Ok(&reference), "N = {n} reversed");
            for seed in 1..4 {
                assert_eq!(build(&shuffled(&input, seed), M).as_ref(), Ok(&reference), "N = {n} seed {seed}");
            }
        }
    }

    #[test]
    fn removing_one_backend_moves_little_more_than_its_own_slots() {
        for n in [3u32, 10, 100] {
            let all = backends(n);
            let before = build(&all, M).expect("valid input");
            let bound = 1.0 / f64::from(n) + 0.01;
            for removed in 0..n as usize {
                let mut rest = all.clone();
                rest.remove(removed);
                let after = build(&rest, M).expect("valid input");
                let moved = moved_share(&before, &after);
                assert!(moved <= bound, "N = {n}, removing {removed}: {moved:.4} of slots moved, bound {bound:.4}");
                // The removed backend's own slots must all have moved to someone else.
                assert!(after.iter().all(|&id| id != removed as u32 && id != NO_BACKEND));
            }
        }
    }

    #[test]
    fn moved_share_counts_differing_slots() {
        assert_eq!(moved_share(&[1, 2, 3, 4], &[1, 2, 3, 4]), 0.0);
        assert_eq!(moved_share(&[1, 2, 3, 4], &[1, 9, 3, 9]), 0.5);
        assert_eq!(moved_share(&[1, 2, 3], &[1, 2]), 1.0);
        assert_eq!(moved_share(&[], &[]), 0.0);
    }

    /// The population loop as first written, with a division per probe: the reference for [`step`].
    fn populate_by_division(perms: &[Permutation], m: u32) -> Vec<u32> {
        let mut table = vec![NO_BACKEND; m as usize];
        let Some(max_weight) = perms.iter().map(|p| p.weight).max() else {
            return table;
        };
        let m = u64::from(m);
        let mut next: Vec<u64> = perms.iter().map(|p| u64::from(p.offset)).collect();
        let mut credit = vec![0u32; perms.len()];
        let mut filled = 0u64;
        loop {
            for (i, p) in perms.iter().enumerate() {
                credit[i] += p.weight;
                if credit[i] < max_weight {
                    continue;
                }
                credit[i] -= max_weight;
                let mut slot = next[i];
                while table[slot as usize] != NO_BACKEND {
                    slot = (slot + u64::from(p.skip)) % m;
                }
                table[slot as usize] = p.id;
                next[i] = (slot + u64::from(p.skip)) % m;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }

    #[test]
    fn populate_fills_the_slots_the_division_form_fills() {
        for n in [1u32, 2, 3, 16, 100] {
            for weighted in [false, true] {
                let input: Vec<MaglevBackend> =
                    (0..n).map(|i| backend(i, if weighted { (i % 7 + 1) as u8 } else { 1 })).collect();
                let perms: Vec<Permutation> = input.iter().map(|b| Permutation::of(b, M)).collect();
                assert_eq!(populate(&perms, M), populate_by_division(&perms, M), "N = {n}, weighted {weighted}");
            }
        }
        // The largest skip and offset: the sum is at most 2M - 2, one subtraction brings it back.
        assert_eq!(step(M as u64 - 1, M as u64 - 1, M as u64), M as u64 - 2);
        assert_eq!(step(0, 1, 2), 1);
        assert_eq!(step(1, 1, 2), 0);
    }

    #[test]
    fn a_builder_gives_what_build_gives_and_populates_each_backend_set_once() {
        // Three instances of two services each, in front of the same two backend sets; each service numbers its
        // backends differently and lists them in another order, as services of different instances do.
        let set_a: Vec<MaglevBackend> = (0..16).map(|i| backend(i, 1)).collect();
        let set_b: Vec<MaglevBackend> = (0..5).map(|i| backend(i + 40, (i % 3 + 1) as u8)).collect();
        let mut builder = Builder::new(M);
        for instance in 0..3u32 {
            for (s, set) in [&set_a, &set_b].into_iter().enumerate() {
                let own: Vec<MaglevBackend> = shuffled(set, u64::from(instance) * 7 + s as u64 + 1)
                    .into_iter()
                    .map(|b| MaglevBackend { id: b.id + 1000 * instance + 100 * s as u32, ..b })
                    .collect();
                assert_eq!(builder.build(&own), build(&own, M), "instance {instance}, service {s}");
            }
        }
        assert_eq!(builder.populated(), 2);
        // A weight of 0 is as if the backend were absent: the same set.
        let mut with_zero = set_a.clone();
        with_zero.push(backend(99, 0));
        assert_eq!(builder.build(&with_zero), build(&set_a, M));
        assert_eq!(builder.populated(), 2);
        // Another weight is another set.
        let mut heavier = set_a.clone();
        heavier[3].weight = 2;
        assert_eq!(builder.build(&heavier), build(&heavier, M));
        assert_eq!(builder.build(&[]), build(&[], M));
        assert_eq!(builder.populated(), 4);
    }

    #[test]
    fn a_builder_refuses_what_build_refuses_and_stays_right_past_its_memory() {
        let mut builder = Builder::new(M);
        let mut dup_key = backends(3);
        dup_key[2].key = dup_key[0].key.clone();
        assert_eq!(builder.build(&dup_key), build(&dup_key, M));
        let mut dup_id = backends(3);
        dup_id[2].id = 0;
        assert_eq!(builder.build(&dup_id), build(&dup_id, M));
        assert_eq!(Builder::new(65536).build(&backends(2)), Err(MaglevError::SizeNotPrime { m: 65536 }));
        // More distinct sets than it remembers, twice over: the first ones are populated again, correctly.
        let sets: Vec<Vec<MaglevBackend>> = (1..=BUILDER_MEMORY as u32 + 2).map(backends).collect();
        for round in 0..2 {
            for set in &sets {
                assert_eq!(builder.build(set), build(set, M), "round {round}, N = {}", set.len());
            }
        }
        assert_eq!(builder.populated(), 2 * sets.len());
    }

    #[test]
    fn ids_are_written_but_not_hashed() {
        // Two nodes may number backends differently; the slot-to-key mapping must still be identical.
        let a = backends(10);
        let b: Vec<MaglevBackend> = a.iter().map(|x| MaglevBackend { id: x.id + 100, ..x.clone() }).collect();
        let ta = build(&a, M).expect("valid input");
        let tb = build(&b, M).expect("valid input");
        assert!(ta.iter().zip(&tb).all(|(x, y)| x + 100 == *y));
    }
}
