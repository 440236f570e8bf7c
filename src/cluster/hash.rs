//! Rendezvous (highest-random-weight) hashing: which live node should own a region. Every node
//! computes the same answer from the same member list, and when a node joins or leaves only the
//! regions it wins or held move.

use sha2::{Digest, Sha256};

/// The weight of `node` for `region`: stable across processes and machines.
fn weight(node: &str, region: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(region.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The node that should own `region` among `nodes` (None when there is none).
pub fn owner<'a>(region: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes.into_iter().max_by_key(|n| (weight(n, region), *n))
}

#[cfg(test)]
mod tests {
    use super::owner;

    fn regions() -> Vec<String> {
        (0..300).map(|i| format!("85{i:05}fffffff")).collect()
    }

    #[test]
    fn every_region_has_one_owner_and_they_spread() {
        let nodes = ["a", "b", "c"];
        let mut counts = [0usize; 3];
        for r in regions() {
            let o = owner(&r, nodes).unwrap();
            counts[nodes.iter().position(|n| *n == o).unwrap()] += 1;
            // The order of the list does not matter.
            assert_eq!(owner(&r, ["c", "a", "b"]), Some(o));
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
        assert_eq!(owner("r", std::iter::empty()), None);
    }

    #[test]
    fn a_node_leaving_moves_only_its_regions() {
        for r in regions() {
            let before = owner(&r, ["a", "b", "c"]).unwrap();
            let after = owner(&r, ["a", "b"]).unwrap();
            if before != "c" {
                assert_eq!(before, after, "{r} moved though its owner stayed");
            }
            // A node joining takes regions only for itself.
            let joined = owner(&r, ["a", "b", "c", "d"]).unwrap();
            assert!(joined == before || joined == "d");
        }
    }
}
