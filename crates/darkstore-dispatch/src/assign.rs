//! Minimum-cost assignment on a sparse bipartite graph.
//!
//! Rows are bundles, columns are riders; each row may also stay unassigned at its own cost (a
//! private dummy column), so every instance has a solution. The solver is the shortest augmenting
//! path method (as in Jonker–Volgenant): rows are added one at a time, each by a Dijkstra search
//! over reduced costs on the candidate edges only, with column potentials that keep reduced costs
//! non-negative. The result is optimal for the graph it is given.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Assigns each row to at most one column (and each column to at most one row) minimising the
/// total cost, where `edges[r]` lists `(column, cost)` and `unassigned[r]` is row r's cost of
/// staying unassigned. Returns, for each row, its column or `None`.
pub fn solve(n_cols: usize, edges: &[Vec<(usize, i64)>], unassigned: &[i64]) -> Vec<Option<usize>> {
    let n_rows = edges.len();
    assert_eq!(unassigned.len(), n_rows);
    // Columns: the real ones, then one dummy per row.
    let n_total = n_cols + n_rows;
    let mut v = vec![0i64; n_total];
    let mut row_of_col = vec![usize::MAX; n_total];
    let mut col_of_row = vec![usize::MAX; n_rows];
    let adjacency = |r: usize| edges[r].iter().copied().chain(std::iter::once((n_cols + r, unassigned[r])));

    let mut dist = vec![i64::MAX; n_total];
    let mut pred = vec![usize::MAX; n_total];
    let mut done = vec![false; n_total];
    let mut touched: Vec<usize> = Vec::new();
    let mut heap = BinaryHeap::new();

    for start in 0..n_rows {
        // u[start] = min reduced cost, so every reduced cost from it is ≥ 0.
        let u_start = adjacency(start).map(|(c, cost)| cost - v[c]).min().expect("a dummy edge exists");
        for (c, cost) in adjacency(start) {
            let d = cost - v[c] - u_start;
            if d < dist[c] {
                if dist[c] == i64::MAX {
                    touched.push(c);
                }
                dist[c] = d;
                pred[c] = start;
                heap.push(Reverse((d, c)));
            }
        }
        let (free_col, final_dist) = loop {
            let Reverse((d, c)) = heap.pop().expect("a free column is always reachable");
            if done[c] || d > dist[c] {
                continue;
            }
            done[c] = true;
            let r = row_of_col[c];
            if r == usize::MAX {
                break (c, d);
            }
            // Row r is matched to c with reduced cost zero: u[r] = cost(r, c) - v[c].
            let matched_cost = adjacency(r).find(|(cc, _)| *cc == c).map(|(_, cost)| cost).expect("matched edge");
            let u_r = matched_cost - v[c];
            for (c2, cost) in adjacency(r) {
                if done[c2] {
                    continue;
                }
                let nd = d + cost - v[c2] - u_r;
                if nd < dist[c2] {
                    if dist[c2] == i64::MAX {
                        touched.push(c2);
                    }
                    dist[c2] = nd;
                    pred[c2] = r;
                    heap.push(Reverse((nd, c2)));
                }
            }
        };
        // Potentials: scanned columns move by how much shorter their path was.
        for &c in &touched {
            if done[c] && dist[c] < final_dist {
                v[c] += dist[c] - final_dist;
            }
        }
        // Augment along the path.
        let mut c = free_col;
        loop {
            let r = pred[c];
            let previous = col_of_row[r];
            col_of_row[r] = c;
            row_of_col[c] = r;
            if r == start {
                break;
            }
            c = previous;
        }
        for &c in &touched {
            dist[c] = i64::MAX;
            pred[c] = usize::MAX;
            done[c] = false;
        }
        touched.clear();
        heap.clear();
    }
    col_of_row.into_iter().map(|c| (c < n_cols).then_some(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::solve;

    fn total(edges: &[Vec<(usize, i64)>], unassigned: &[i64], sol: &[Option<usize>]) -> i64 {
        sol.iter()
            .enumerate()
            .map(|(r, c)| match c {
                Some(c) => edges[r].iter().find(|(cc, _)| cc == c).unwrap().1,
                None => unassigned[r],
            })
            .sum()
    }

    /// Every assignment, by brute force.
    fn brute(n_cols: usize, edges: &[Vec<(usize, i64)>], unassigned: &[i64]) -> i64 {
        fn go(r: usize, used: &mut Vec<bool>, edges: &[Vec<(usize, i64)>], unassigned: &[i64]) -> i64 {
            if r == edges.len() {
                return 0;
            }
            let mut best = unassigned[r] + go(r + 1, used, edges, unassigned);
            for &(c, cost) in &edges[r] {
                if !used[c] {
                    used[c] = true;
                    best = best.min(cost + go(r + 1, used, edges, unassigned));
                    used[c] = false;
                }
            }
            best
        }
        go(0, &mut vec![false; n_cols], edges, unassigned)
    }

    #[test]
    fn table() {
        // (description, n_cols, edges, unassigned, expected assignment)
        type Case = (&'static str, usize, Vec<Vec<(usize, i64)>>, Vec<i64>, Vec<Option<usize>>);
        let cases: Vec<Case> = vec![
            (
                "greedy would be wrong",
                2,
                vec![vec![(0, 1), (1, 2)], vec![(0, 2), (1, 100)]],
                vec![1000, 1000],
                vec![Some(1), Some(0)],
            ),
            ("more rows than columns", 1, vec![vec![(0, 5)], vec![(0, 3)]], vec![10, 10], vec![None, Some(0)]),
            ("staying unassigned is cheaper", 1, vec![vec![(0, 50)]], vec![10], vec![None]),
            ("no edges at all", 3, vec![vec![], vec![]], vec![1, 1], vec![None, None]),
            ("negative costs", 2, vec![vec![(0, -5), (1, -1)], vec![(0, -4)]], vec![0, 0], vec![Some(1), Some(0)]),
        ];
        for (what, n_cols, edges, unassigned, expected) in cases {
            assert_eq!(solve(n_cols, &edges, &unassigned), expected, "{what}");
        }
    }

    #[test]
    fn optimal_against_brute_force_on_random_graphs() {
        let mut seed: u64 = 0x2545F4914F6CDD1D;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for case in 0..500 {
            let n_rows = 1 + rand(6) as usize;
            let n_cols = 1 + rand(6) as usize;
            let mut edges: Vec<Vec<(usize, i64)>> = vec![Vec::new(); n_rows];
            for row in edges.iter_mut() {
                for c in 0..n_cols {
                    if rand(3) > 0 {
                        row.push((c, rand(100) as i64));
                    }
                }
            }
            let unassigned: Vec<i64> = (0..n_rows).map(|_| 50 + rand(100) as i64).collect();
            let sol = solve(n_cols, &edges, &unassigned);
            let mut used: Vec<usize> = sol.iter().flatten().copied().collect();
            used.sort();
            let n = used.len();
            used.dedup();
            assert_eq!(used.len(), n, "case {case}: a column used twice");
            assert_eq!(total(&edges, &unassigned, &sol), brute(n_cols, &edges, &unassigned), "case {case}: {edges:?}");
        }
    }
}
