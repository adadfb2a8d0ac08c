//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): each backend gets a permutation of the
//! table's slots from two hashes of its name; backends take turns claiming their next free slot
//! until the table is full. Every backend ends up with an almost equal share, and removing one
//! moves little more than its own slots.
//!
//! The table size is a prime of at least 100 × the number of backends (the paper's bound for a
//! share imbalance under about 1%), capped so one huge Service cannot eat the slot space.

/// Upper bound of a table's size (a prime).
pub(crate) const MAX_TABLE_SIZE: u32 = 65_537;

/// Slots per backend the table aims for.
const SLOTS_PER_BACKEND: u64 = 100;

/// The table size for `backends` backends: 0 for none, else the smallest prime
/// ≥ 100 × backends, at most [`MAX_TABLE_SIZE`].
pub(crate) fn table_size(backends: usize) -> u32 {
    if backends == 0 {
        return 0;
    }
    let wanted = (backends as u64 * SLOTS_PER_BACKEND).min(MAX_TABLE_SIZE as u64) as u32;
    let mut candidate = wanted.max(2);
    while !is_prime(candidate) {
        candidate += 1;
    }
    candidate
}

/// The size to use when a table of `current` slots must now hold `backends` backends: the current
/// size while it stays within 100× to 400× the backends (or at the cap), so that one backend coming
/// or going moves only its own share of slots; otherwise a fresh [`table_size`].
pub(crate) fn resize(current: u32, backends: usize) -> u32 {
    let wanted = table_size(backends);
    if backends == 0 || current == 0 {
        return wanted;
    }
    let per_backend = current as u64 / backends as u64;
    let big_enough = current >= wanted;
    let not_wasteful = per_backend <= 4 * SLOTS_PER_BACKEND;
    if big_enough && not_wasteful {
        current
    } else {
        wanted
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut divisor = 3u32;
    while divisor.saturating_mul(divisor) <= n {
        if n.is_multiple_of(divisor) {
            return false;
        }
        divisor += 2;
    }
    true
}

/// FNV-1a, 64 bit, with a seed mixed in: stable across builds and processes, so a restarted
/// agent computes the same table for the same backends.
fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for byte in bytes {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    // Final avalanche: FNV's low bits are weak for short keys.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    hash ^= hash >> 33;
    hash
}

/// Fills a table of `size` slots (a prime) for backends identified by `names` (their order does
/// not matter). Each slot holds an index into `names`. Empty when there are no backends.
pub(crate) fn populate<N: AsRef<[u8]>>(names: &[N], size: u32) -> Vec<u32> {
    if names.is_empty() || size == 0 {
        return Vec::new();
    }
    let m = size as u64;
    // Sort by name so the same set of backends always yields the same table.
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|a, b| names[*a].as_ref().cmp(names[*b].as_ref()));
    let permutations: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let name = names[i].as_ref();
            let offset = stable_hash(name, 0xdead_beef) % m;
            let skip = if m > 1 {
                stable_hash(name, 0x0bad_cafe) % (m - 1) + 1
            } else {
                1
            };
            (offset, skip)
        })
        .collect();
    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size as usize];
    let mut next = vec![0u64; order.len()];
    let mut filled = 0u64;
    'fill: loop {
        for (turn, &(offset, skip)) in permutations.iter().enumerate() {
            let mut slot = (offset + next[turn] * skip) % m;
            while table[slot as usize] != EMPTY {
                next[turn] += 1;
                slot = (offset + next[turn] * skip) % m;
            }
            table[slot as usize] = order[turn] as u32;
            next[turn] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for slot in table {
            counts[*slot as usize] += 1;
        }
        counts
    }

    #[test]
    fn sizes_are_primes_of_at_least_100_per_backend_and_bounded() {
        assert_eq!(table_size(0), 0);
        assert_eq!(table_size(1), 101);
        assert_eq!(table_size(10), 1009);
        assert_eq!(table_size(3), 307);
        for n in [2, 7, 64, 500, 655] {
            let size = table_size(n);
            assert!(is_prime(size) && size as usize >= 100 * n, "{n} -> {size}");
        }
        assert_eq!(table_size(5_000), MAX_TABLE_SIZE);
        assert!(is_prime(MAX_TABLE_SIZE));
    }

    #[test]
    fn resize_keeps_the_size_while_it_fits() {
        assert_eq!(resize(1009, 9), 1009);
        assert_eq!(resize(1009, 11), table_size(11));
        assert_eq!(resize(1009, 2), table_size(2));
        assert_eq!(resize(0, 3), 307);
        assert_eq!(resize(307, 0), 0);
    }

    #[test]
    fn every_slot_is_filled_with_a_valid_backend() {
        for n in [1, 2, 3, 10, 97] {
            let size = table_size(n);
            let table = populate(&names(n), size);
            assert_eq!(table.len(), size as usize);
            assert!(table.iter().all(|&b| (b as usize) < n));
        }
    }

    #[test]
    fn shares_are_equal_within_a_few_percent() {
        for n in [3, 10, 50] {
            let table = populate(&names(n), table_size(n));
            let ideal = table.len() as f64 / n as f64;
            for (backend, count) in shares(&table, n).into_iter().enumerate() {
                let deviation = (count as f64 - ideal).abs() / ideal;
                assert!(
                    deviation < 0.03,
                    "n={n} backend {backend}: {count} vs {ideal:.1}"
                );
            }
        }
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let mut list = names(10);
        let size = table_size(10);
        let first: Vec<String> = populate(&list, size)
            .iter()
            .map(|&i| list[i as usize].clone())
            .collect();
        list.reverse();
        let second: Vec<String> = populate(&list, size)
            .iter()
            .map(|&i| list[i as usize].clone())
            .collect();
        assert_eq!(first, second);
    }

    #[test]
    fn removing_one_backend_moves_little_else() {
        // Same table size before and after, as when a Service's size is kept across a change.
        let n = 20;
        let size = table_size(n);
        let before_names = names(n);
        let before: Vec<&str> = populate(&before_names, size)
            .iter()
            .map(|&i| before_names[i as usize].as_str())
            .collect();
        let removed = before_names[7].clone();
        let after_names: Vec<String> = before_names
            .iter()
            .filter(|n| **n != removed)
            .cloned()
            .collect();
        let after: Vec<&str> = populate(&after_names, size)
            .iter()
            .map(|&i| after_names[i as usize].as_str())
            .collect();
        let mut moved_others = 0;
        for (old, new) in before.iter().zip(&after) {
            if *old != removed && old != new {
                moved_others += 1;
            }
            assert_ne!(*new, removed.as_str());
        }
        let others_slots = before.iter().filter(|b| **b != removed).count();
        let fraction = moved_others as f64 / others_slots as f64;
        assert!(
            fraction < 0.05,
            "{:.2}% of other backends' slots moved",
            fraction * 100.0
        );
    }

    #[test]
    fn flow_hash_spreads_over_a_table() {
        // The kernel's hash of 5-tuples must use the whole table, not a corner of it.
        let size = table_size(3);
        let table = populate(&names(3), size);
        let mut hits = [0usize; 3];
        for port in 0..30_000u16 {
            let h =
                ingress_common::flow_hash(0x0200_00c0, 0x0a71_00cb, port.to_be(), 80u16.to_be(), 6);
            hits[table[(h % size) as usize] as usize] += 1;
        }
        for count in hits {
            assert!((9_000..11_000).contains(&count), "{hits:?}");
        }
    }
}
