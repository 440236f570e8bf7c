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
    // Row r's edges, its dummy column (`n_cols + r`) last, laid out flat: `adj[at[r]..at[r + 1]]`.
    let mut at = Vec::with_capacity(n_rows + 1);
    let mut adj: Vec<(usize, i64)> = Vec::with_capacity(edges.iter().map(Vec::len).sum::<usize>() + n_rows);
    for (r, row) in edges.iter().enumerate() {
        at.push(adj.len());
        adj.extend_from_slice(row);
        adj.push((n_cols + r, unassigned[r]));
    }
    at.push(adj.len());
    let adjacency = |r: usize| &adj[at[r]..at[r + 1]];
    // Columns: the real ones, then one dummy per row; what a search reads of a column together.
    let mut cols = vec![Col { v: 0, dist: i64::MAX, pred: usize::MAX, row: usize::MAX, done: false }; n_cols + n_rows];
    let mut col_of_row = vec![usize::MAX; n_rows];
    // The cost of each row's matched edge.
    let mut matched_cost = vec![0i64; n_rows];
    let mut touched: Vec<usize> = Vec::new();
    let mut heap = BinaryHeap::new();

    for first in 0..n_rows {
        // u[first] = min reduced cost, so every reduced cost from it is ≥ 0.
        let u_first = adjacency(first).iter().map(|&(c, cost)| cost - cols[c].v).min().expect("a dummy edge exists");
        for &(c, cost) in adjacency(first) {
            let col = &mut cols[c];
            let d = cost - col.v - u_first;
            if d < col.dist {
                if col.dist == i64::MAX {
                    touched.push(c);
                }
                col.dist = d;
                col.pred = first;
                heap.push(Reverse((d, c)));
            }
        }
        let (free_col, final_dist) = loop {
            let Reverse((d, c)) = heap.pop().expect("a free column is always reachable");
            let col = &mut cols[c];
            if col.done || d > col.dist {
                continue;
            }
            col.done = true;
            let r = col.row;
            if r == usize::MAX {
                break (c, d);
            }
            // Row r is matched to c with reduced cost zero: u[r] = cost(r, c) - v[c].
            let u_r = matched_cost[r] - col.v;
            for &(c2, cost) in adjacency(r) {
                let col2 = &mut cols[c2];
                if col2.done {
                    continue;
                }
                let nd = d + cost - col2.v - u_r;
                if nd < col2.dist {
                    if col2.dist == i64::MAX {
                        touched.push(c2);
                    }
                    col2.dist = nd;
                    col2.pred = r;
                    heap.push(Reverse((nd, c2)));
                }
            }
        };
        // Potentials: scanned columns move by how much shorter their path was.
        for &c in &touched {
            let col = &mut cols[c];
            if col.done && col.dist < final_dist {
                col.v += col.dist - final_dist;
            }
        }
        // Augment along the path.
        let mut c = free_col;
        loop {
            let r = cols[c].pred;
            let previous = col_of_row[r];
            col_of_row[r] = c;
            cols[c].row = r;
            matched_cost[r] = adjacency(r).iter().find(|(cc, _)| *cc == c).map(|&(_, cost)| cost).expect("an edge");
            if r == first {
                break;
            }
            c = previous;
        }
        for &c in &touched {
            let col = &mut cols[c];
            col.dist = i64::MAX;
            col.pred = usize::MAX;
            col.done = false;
        }
        touched.clear();
        heap.clear();
    }
    col_of_row.into_iter().map(|c| (c < n_cols).then_some(c)).collect()
}

/// A column's potential, its search state and the row matched to it.
#[derive(Clone, Copy)]
struct Col {
    v: i64,
    dist: i64,
    pred: usize,
    row: usize,
    done: bool,
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
