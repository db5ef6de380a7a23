//! Token trie over decoded byte strings, stored in depth-first (pre-)order.
//!
//! Each node is one byte; a node may end one or more tokens (several ids can decode to the same
//! bytes, e.g. Mistral's `A` and `<0x41>`). Pre-order storage lets a walk skip a whole subtree with
//! one jump (`next`), which is what makes mask computation cheap: a DFA state that rejects byte `b`
//! at depth d prunes every token sharing that prefix. The trie is tokenizer-agnostic: it only sees
//! `(id, bytes)` pairs.

/// One trie node (16 bytes); the walk reads them sequentially.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Index just past this node's subtree.
    next: u32,
    /// Range into `Trie::tokens` of the tokens ending here.
    tok_start: u32,
    /// Index into `Trie::tokens` of the first token of this subtree (the subtree's tokens are
    /// contiguous there, ending at the next subtree's `first_tok`).
    first_tok: u32,
    tok_len: u16,
    byte: u8,
    depth: u8,
    /// Length in bytes of the longest token in this subtree.
    sub_max: u8,
    /// Bit `l` set: a token of exactly `l` bytes lies in this subtree (lengths < 64).
    len_mask: u64,
}

/// A token trie (root at index 0, which holds no byte and no token).
#[derive(Debug, Clone)]
pub struct Trie {
    nodes: Vec<Node>,
    tokens: Vec<u32>,
    max_depth: usize,
}

impl Trie {
    /// Builds a trie over the given `(id, bytes)` pairs. Empty byte strings are skipped (a token
    /// that adds no text is never useful inside a document); strings longer than 255 bytes too.
    pub fn new(entries: &[(u32, &[u8])]) -> Trie {
        let mut sorted: Vec<(u32, &[u8])> = entries
            .iter()
            .copied()
            .filter(|(_, b)| !b.is_empty() && b.len() <= 255)
            .collect();
        sorted.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
        let mut nodes = vec![Node {
            next: 0,
            tok_start: 0,
            first_tok: 0,
            tok_len: 0,
            byte: 0,
            depth: 0,
            sub_max: 0,
            len_mask: 0,
        }];
        let mut tokens = Vec::with_capacity(sorted.len());
        // path[d] = node index at depth d on the current branch.
        let mut path: Vec<usize> = vec![0];
        let mut prev: &[u8] = &[];
        let mut max_depth = 0;
        for (id, bytes) in sorted {
            // Length of the common prefix with the previous string: those nodes are reused.
            let common = prev.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            // Close nodes deeper than the common prefix.
            while path.len() > common + 1 {
                if let Some(i) = path.pop() {
                    nodes[i].next = nodes.len() as u32;
                }
            }
            for (d, &b) in bytes.iter().enumerate().skip(common) {
                let first_tok = tokens.len() as u32;
                nodes.push(Node {
                    next: 0,
                    tok_start: 0,
                    first_tok,
                    tok_len: 0,
                    byte: b,
                    depth: (d + 1) as u8,
                    sub_max: 0,
                    len_mask: 0,
                });
                path.push(nodes.len() - 1);
            }
            let last = path[path.len() - 1];
            if nodes[last].tok_len == 0 {
                nodes[last].tok_start = tokens.len() as u32;
            }
            nodes[last].tok_len += 1;
            tokens.push(id);
            for &i in &path {
                nodes[i].sub_max = nodes[i].sub_max.max(bytes.len() as u8);
                if bytes.len() < 64 {
                    nodes[i].len_mask |= 1u64 << bytes.len();
                }
            }
            max_depth = max_depth.max(bytes.len());
            prev = bytes;
        }
        let end = nodes.len() as u32;
        for i in path {
            nodes[i].next = end;
        }
        Trie {
            nodes,
            tokens,
            max_depth,
        }
    }

    /// Number of nodes (root included).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of tokens stored.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Walks every token whose bytes the automaton accepts from `start`.
    /// `step(state, byte)` returns the next state, 0 meaning dead (the subtree is skipped).
    /// `visit(token_ids, state_after)` is called for every node that ends tokens.
    #[inline]
    pub fn walk<S, V>(&self, start: u32, step: S, mut visit: V)
    where
        S: Fn(u32, u8) -> u32,
        V: FnMut(&[u32], u32),
    {
        let mut stack = vec![0u32; self.max_depth + 1];
        stack[0] = start;
        let nodes = &self.nodes;
        let mut i = 1usize;
        while i < nodes.len() {
            let nd = nodes[i];
            let d = nd.depth as usize;
            let ns = step(stack[d - 1], nd.byte);
            if ns == 0 {
                i = nd.next as usize;
                continue;
            }
            stack[d] = ns;
            if nd.tok_len > 0 {
                let s = nd.tok_start as usize;
                visit(&self.tokens[s..s + nd.tok_len as usize], ns);
            }
            i += 1;
        }
    }

    /// Like [`Trie::walk`], but at a node where `cut(state, depth, longest)` is true (`longest`
    /// = byte length of the longest token below, always < 64 when cut is asked), the whole
    /// subtree is reported at once as `range(first, end, depth, state, len_mask)` (indices into
    /// [`Trie::tokens_in`]; bit `l` of `len_mask` set when a token of `l` bytes is in the range)
    /// and not descended.
    #[inline]
    pub fn walk_cut<S, C, R, V>(&self, start: u32, step: S, cut: C, mut range: R, mut visit: V)
    where
        S: Fn(u32, u8) -> u32,
        C: Fn(u32, usize, usize) -> bool,
        R: FnMut(u32, u32, usize, u32, u64),
        V: FnMut(&[u32], u32),
    {
        let mut stack = vec![0u32; self.max_depth + 1];
        stack[0] = start;
        let nodes = &self.nodes;
        let total = self.tokens.len() as u32;
        let mut i = 1usize;
        while i < nodes.len() {
            let nd = nodes[i];
            let d = nd.depth as usize;
            let ns = step(stack[d - 1], nd.byte);
            if ns == 0 {
                i = nd.next as usize;
                continue;
            }
            if nd.sub_max < 64 && cut(ns, d, nd.sub_max as usize) {
                let end = nodes.get(nd.next as usize).map_or(total, |n| n.first_tok);
                range(nd.first_tok, end, d, ns, nd.len_mask);
                i = nd.next as usize;
                continue;
            }
            stack[d] = ns;
            if nd.tok_len > 0 {
                let s = nd.tok_start as usize;
                visit(&self.tokens[s..s + nd.tok_len as usize], ns);
            }
            i += 1;
        }
    }

    /// Tokens by position in trie order (see [`Trie::walk_cut`]).
    pub fn tokens_in(&self, first: u32, end: u32) -> &[u32] {
        &self.tokens[first as usize..end as usize]
    }

    /// Follows `bytes` from the root and reports every token that is a prefix of `bytes`
    /// (shortest first), with its length. Used by the greedy reference tokenizer.
    pub fn prefixes(&self, bytes: &[u8], mut visit: impl FnMut(&[u32], usize)) {
        let mut i = 1usize;
        let mut depth = 0usize;
        while i < self.nodes.len() && depth < bytes.len() {
            let nd = self.nodes[i];
            if nd.depth as usize != depth + 1 {
                // Left the subtree of the current prefix: no more matches.
                break;
            }
            if nd.byte == bytes[depth] {
                depth += 1;
                if nd.tok_len > 0 {
                    let s = nd.tok_start as usize;
                    visit(&self.tokens[s..s + nd.tok_len as usize], depth);
                }
                i += 1; // descend into the first child
            } else {
                i = nd.next as usize; // next sibling
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_prunes_and_finds() {
        let e: Vec<(u32, &[u8])> = vec![
            (0, b"a"),
            (1, b"ab"),
            (2, b"abc"),
            (3, b"b"),
            (4, b"ab"),
            (5, b""),
        ];
        let t = Trie::new(&e);
        assert_eq!(t.token_count(), 5);
        // Automaton accepting strings over {a, b} only, state 1 everywhere.
        let mut seen = Vec::new();
        t.walk(
            1,
            |_, b| if b == b'a' || b == b'b' { 1 } else { 0 },
            |ids, _| seen.extend_from_slice(ids),
        );
        seen.sort();
        assert_eq!(seen, vec![0, 1, 3, 4]);
        let mut pre = Vec::new();
        t.prefixes(b"abcd", |ids, n| pre.push((ids.to_vec(), n)));
        assert_eq!(pre, vec![(vec![0], 1), (vec![1, 4], 2), (vec![2], 3)]);
        // Cut at depth 1 under 'a': one range holding a, ab, ab, abc.
        let mut ranges = Vec::new();
        let mut single = Vec::new();
        t.walk_cut(
            1,
            |_, _| 1,
            |_, d, _| d == 1,
            |a, b, d, _, _| ranges.push((a, b, d)),
            |ids, _| single.extend_from_slice(ids),
        );
        assert!(single.is_empty());
        assert_eq!(ranges.len(), 2);
        let (a, b, _) = ranges[0];
        let mut r: Vec<u32> = t.tokens_in(a, b).to_vec();
        r.sort();
        assert_eq!(r, vec![0, 1, 2, 4]);
        assert_eq!(t.tokens_in(ranges[1].0, ranges[1].1), &[3]);
        let mut pre = Vec::new();
        t.prefixes(b"bx", |ids, n| pre.push((ids.to_vec(), n)));
        assert_eq!(pre, vec![(vec![3], 1)]);
    }
}
