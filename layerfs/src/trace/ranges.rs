//! Sorted, disjoint byte ranges of one file, kept to a bounded count.

use std::ops::Range;

/// Adds `r` to `set` (sorted, disjoint, none empty), merging what it
/// touches; past `cap` ranges the two closest are joined, so a file read
/// in many small pieces costs a bounded record that still covers them.
pub(crate) fn add(set: &mut Vec<Range<u64>>, r: Range<u64>, cap: usize) {
    if r.start >= r.end {
        return;
    }
    // The first range that ends at or after r.start may touch it.
    let from = set.partition_point(|x| x.end < r.start);
    let mut to = from;
    let mut merged = r;
    while to < set.len() && set[to].start <= merged.end {
        merged.start = merged.start.min(set[to].start);
        merged.end = merged.end.max(set[to].end);
        to += 1;
    }
    set.splice(from..to, std::iter::once(merged));
    while set.len() > cap.max(1) {
        let closest = (1..set.len())
            .min_by_key(|&i| set[i].start - set[i - 1].end)
            .unwrap_or(1);
        let end = set[closest].end;
        set[closest - 1].end = end;
        set.remove(closest);
    }
}

/// Total bytes of `set`.
pub(crate) fn bytes(set: &[Range<u64>]) -> u64 {
    set.iter().map(|r| r.end - r.start).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_what_touches_and_keeps_within_the_cap() {
        let mut s = Vec::new();
        add(&mut s, 10..20, 8);
        add(&mut s, 30..40, 8);
        add(&mut s, 20..30, 8);
        assert_eq!(s, vec![10..40]);
        add(&mut s, 0..5, 8);
        add(&mut s, 100..110, 8);
        add(&mut s, 5..5, 8);
        assert_eq!(s, vec![0..5, 10..40, 100..110]);
        add(&mut s, 3..105, 8);
        assert_eq!(s, vec![0..110]);

        let mut s = Vec::new();
        for i in 0..10u64 {
            add(&mut s, i * 100..i * 100 + 10, 4);
        }
        assert_eq!(s.len(), 4);
        // Everything read is still covered.
        for i in 0..10u64 {
            assert!(s
                .iter()
                .any(|r| r.start <= i * 100 && r.end >= i * 100 + 10));
        }
        assert!(s.windows(2).all(|w| w[0].end < w[1].start));
    }
}
