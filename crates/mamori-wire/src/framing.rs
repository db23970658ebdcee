//! gRPC's message framing (a flag byte, a four-byte big-endian length, the message) read
//! and written by hand, for the server's ingest stream: [`Framing`] splits an HTTP/2 body's
//! data into messages, each copied into an allocation of exactly its size, holding nothing
//! between messages but an unfinished header; [`frame`] frames a reply.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why a stream's framing was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A message longer than the limit (nothing of it is read into memory).
    #[error("a message of {len} bytes; the limit is {max}")]
    TooLarge {
        /// Its length, from its header.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The compressed flag (or another value) in a message header: the server accepts no
    /// compression.
    #[error("message flag {0}: compressed messages are not accepted")]
    Compressed(u8),
    /// The stream ended inside a message.
    #[error("the stream ended inside a message")]
    Truncated,
}

/// Splits a gRPC stream's data into messages, each in an allocation of exactly its length.
#[derive(Debug)]
pub struct Framing {
    max: usize,
    head: [u8; 5],
    got: usize,
    body: Option<(BytesMut, usize)>,
}

impl Framing {
    /// Framing that refuses messages over `max` bytes.
    pub fn new(max: usize) -> Framing {
        Framing {
            max,
            head: [0; 5],
            got: 0,
            body: None,
        }
    }

    /// Takes bytes from the front of `data` until a message is complete (returned; what
    /// follows it stays in `data`) or `data` is used up (`None`).
    pub fn feed(&mut self, data: &mut Bytes) -> Result<Option<Bytes>, FrameError> {
        let (buf, len) = match &mut self.body {
            Some(body) => body,
            None => {
                let take = (self.head.len() - self.got).min(data.len());
                self.head[self.got..self.got + take].copy_from_slice(&data[..take]);
                data.advance(take);
                self.got += take;
                if self.got < self.head.len() {
                    return Ok(None);
                }
                self.got = 0;
                if self.head[0] != 0 {
                    return Err(FrameError::Compressed(self.head[0]));
                }
                let [_, l @ ..] = self.head;
                let len = u32::from_be_bytes(l) as usize;
                if len > self.max {
                    return Err(FrameError::TooLarge { len, max: self.max });
                }
                self.body.insert((BytesMut::with_capacity(len), len))
            }
        };
        let take = (*len - buf.len()).min(data.len());
        buf.put_slice(&data[..take]);
        data.advance(take);
        if buf.len() < *len {
            return Ok(None);
        }
        Ok(self.body.take().map(|(buf, _)| buf.freeze()))
    }

    /// At the end of the stream: an error if a message was begun and not finished.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.got > 0 || self.body.is_some() {
            Err(FrameError::Truncated)
        } else {
            Ok(())
        }
    }
}

/// A message in gRPC framing: flag 0 (not compressed), its length, the message.
pub fn frame(msg: &impl prost::Message) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode_raw(&mut buf);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ack;
    use prost::Message as _;

    /// `msgs` framed one after another in one buffer.
    fn stream(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            out.push(0);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    /// Feeds `data` in chunks cut at `cuts` (sorted offsets); every message out, in order.
    fn read(f: &mut Framing, data: &[u8], cuts: &[usize]) -> Result<Vec<Bytes>, FrameError> {
        let mut out = Vec::new();
        let mut at = 0;
        for &end in cuts.iter().chain([&data.len()]) {
            let mut chunk = Bytes::copy_from_slice(&data[at..end.max(at)]);
            at = end.max(at);
            let frame = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
            while !chunk.is_empty() {
                if let Some(m) = f.feed(&mut chunk)? {
                    // A copy: the message does not keep the stream's frame alive.
                    assert!(
                        m.is_empty() || !frame.contains(&(m.as_ptr() as usize)),
                        "a message sliced from its frame"
                    );
                    out.push(m);
                }
            }
        }
        f.finish()?;
        Ok(out)
    }

    #[test]
    fn messages_come_out_whole_however_the_data_is_cut() {
        let big = vec![7u8; 40_000];
        let msgs: [&[u8]; 4] = [b"first", b"", &big, b"last"];
        let data = stream(&msgs);
        let expect: Vec<Bytes> = msgs.iter().map(|m| Bytes::copy_from_slice(m)).collect();
        // All at once, byte by byte, and cut inside every header.
        let every: Vec<usize> = (1..data.len()).collect();
        for cuts in [vec![], every, vec![2, 5, 9, 11, 14, 40_010, 40_016]] {
            let mut f = Framing::new(1 << 20);
            assert_eq!(read(&mut f, &data, &cuts).unwrap(), expect, "cuts {cuts:?}");
        }
        // Random cuts.
        let mut rng = fastrand::Rng::with_seed(41);
        for _ in 0..200 {
            let mut cuts: Vec<usize> = (0..rng.usize(..12))
                .map(|_| rng.usize(..data.len()))
                .collect();
            cuts.sort_unstable();
            let mut f = Framing::new(1 << 20);
            assert_eq!(read(&mut f, &data, &cuts).unwrap(), expect, "cuts {cuts:?}");
        }
    }

    #[test]
    fn oversized_compressed_and_cut_off_messages_are_refused() {
        // The length is refused from the header, before any of the message is read.
        let mut f = Framing::new(100);
        let mut head = Bytes::from_static(&[0, 0, 0, 0, 101]);
        assert_eq!(
            f.feed(&mut head),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        );
        let mut f = Framing::new(100);
        assert!(
            f.feed(&mut Bytes::from_static(&[0, 0, 0, 0, 100]))
                .unwrap()
                .is_none()
        );
        let mut f = Framing::new(100);
        let mut head = Bytes::from_static(&[1, 0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(f.feed(&mut head), Err(FrameError::Compressed(1)));
        assert!(
            FrameError::Compressed(1)
                .to_string()
                .contains("compressed messages are not accepted")
        );
        // Ends inside a header, inside a message; a clean end.
        for data in [&[0u8, 0][..], &[0, 0, 0, 0, 4, 1, 2]] {
            let mut f = Framing::new(100);
            assert!(f.feed(&mut Bytes::copy_from_slice(data)).unwrap().is_none());
            assert_eq!(f.finish(), Err(FrameError::Truncated));
        }
        assert_eq!(Framing::new(100).finish(), Ok(()));
    }

    #[test]
    fn random_bytes_never_panic_and_every_message_is_within_the_limit() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let mut f = Framing::new(64);
            let mut data = Bytes::from(
                (0..rng.usize(..300))
                    .map(|_| if rng.bool() { 0 } else { rng.u8(..) })
                    .collect::<Vec<u8>>(),
            );
            while !data.is_empty() {
                match f.feed(&mut data) {
                    Ok(Some(m)) => assert!(m.len() <= 64),
                    Ok(None) => assert!(data.is_empty()),
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn acknowledgements_are_framed_as_grpc_messages() {
        let ack = Ack {
            durable_through: 300,
        };
        let framed = frame(&ack);
        let mut f = Framing::new(16);
        let mut data = framed.clone();
        let msg = f.feed(&mut data).unwrap().unwrap();
        assert_eq!(Ack::decode(msg).unwrap(), ack);
        assert_eq!(framed[0], 0);
        assert_eq!(framed.len(), 5 + ack.encoded_len());
    }
}
