//! Helpers for tests in other crates (feature `testing`): not part of the product.

/// `seed` with one to three random edits: a byte replaced by JSON punctuation or a letter,
/// the text cut, a random byte inserted, or a stretch of up to `splice_max` bytes of `seed`
/// copied in. Mutation tests compare a fast reader with the tree on what comes out.
pub fn mutate(rng: &mut fastrand::Rng, seed: &[u8], splice_max: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"{}[]\",:.\\a1 ";
    let mut v = seed.to_vec();
    for _ in 0..rng.usize(1..4) {
        let i = rng.usize(..v.len());
        match rng.u32(0..4) {
            0 => v[i] = ALPHABET[rng.usize(..ALPHABET.len())],
            1 => v.truncate(i.max(1)),
            2 => v.insert(i, rng.u8(..)),
            _ => {
                let j = rng.usize(..seed.len());
                let k = (j + rng.usize(..splice_max)).min(seed.len());
                v.splice(i..i, seed[j..k].iter().copied());
            }
        }
    }
    v
}
