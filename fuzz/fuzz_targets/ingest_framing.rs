//! The server's ingest stream framing (`mamori_wire::framing`), fed what a hostile agent
//! could send, cut into chunks where the input says. Invariant: no panic; every message is
//! within the limit and is exactly the bytes its header announced; after an error nothing
//! more is read; a batch decoded from a message never panics either.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mamori_wire::framing::Framing;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let max = 1 << 12;
    let mut f = Framing::new(max);
    let mut at = 0;
    // Chunks of `cut + 1` bytes: the framing must not depend on where frames end.
    for chunk in data.chunks(usize::from(cut) + 1) {
        let mut rest = Bytes::copy_from_slice(chunk);
        while !rest.is_empty() {
            let before = rest.len();
            match f.feed(&mut rest) {
                Ok(Some(msg)) => {
                    assert!(msg.len() <= max);
                    at += before - rest.len();
                    let end = at;
                    assert_eq!(&data[end - msg.len()..end], &msg[..]);
                    let _ = mamori_wire::Batch::decode(msg);
                }
                Ok(None) => {
                    assert!(rest.is_empty());
                    at += before;
                }
                Err(_) => return,
            }
        }
    }
    let _ = f.finish();
});
