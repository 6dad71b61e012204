//! [`AuthorityFix`]: accepts an HTTP/2 `:authority` that carries a scheme.
//!
//! etcd's Go client (etcdctl 3.4 among others) sends the endpoint it was given as the
//! `:authority` of its requests, scheme included (`http://127.0.0.1:2379`) — for instance for
//! `etcdctl endpoint status --cluster`, which dials the URLs `member list` advertises. That is
//! not an authority (RFC 3986 §3.2), and the HTTP/2 server under tonic resets every such
//! stream with `PROTOCOL_ERROR` before any of our code runs. etcd's own server does not look
//! at the authority, so those clients work against etcd.
//!
//! This filter sits between the socket (after TLS) and the HTTP/2 server, on the client
//! listener only. It follows the client's frames up to the end of the connection's first
//! header block and decodes that block (HPACK). A client sends one authority for the whole
//! connection, so the first request decides: if its `:authority` holds `scheme://`, the
//! filter drops the scheme and re-encodes that block and every later one (decoding each, to
//! keep the client's dynamic table in step: re-encoded blocks are literals that never touch
//! the server's dynamic table, so the client's references to its own table could not be
//! passed through as they are); every other byte passes through unchanged. Otherwise the
//! filter steps aside for the rest of the connection and the connection reads the socket
//! directly again: a well-formed client pays one header decoding per connection, not per
//! request. The re-encoded blocks use no Huffman coding and no table: a little larger, never
//! ambiguous.
//!
//! Hostile input: anything that is not what a well-formed client sends (no HTTP/2 preface — an
//! HTTP/1.1 request —, an undecodable block, frames out of order, a block over
//! [`MAX_BLOCK_BYTES`]) makes the filter step aside and pass the rest of the connection
//! through untouched, so the HTTP/2 server refuses it exactly as it would have; if blocks were
//! already re-encoded, stepping aside would hand the server references it cannot resolve,
//! so the connection is closed instead. Buffers are bounded; nothing here panics.

use bytes::{Buf, BufMut, BytesMut};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame header length.
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Largest header block (all its frames' payloads) the filter collects; a larger one makes
/// it step aside (the HTTP/2 server applies its own limit).
pub(crate) const MAX_BLOCK_BYTES: usize = 256 * 1024;

/// Frames written by the filter carry at most this much payload: the smallest maximum frame
/// size a peer may set (RFC 9113 §4.2), so they fit whatever the server announced.
const MAX_WRITTEN_PAYLOAD: usize = 16_384;

/// The header table size the client's encoder may use: the HTTP/2 server's (h2's) default,
/// which it does not change.
const HEADER_TABLE_BYTES: usize = 4096;

/// What the filter expects next.
enum State {
    /// The connection preface; `usize` bytes of it seen.
    Preface(usize),
    /// A frame header.
    FrameHeader,
    /// `usize` more payload bytes of a frame that passes through.
    Payload(usize),
    /// The payload of a HEADERS or CONTINUATION frame (header given), to collect.
    BlockPayload([u8; FRAME_HEADER]),
    /// Not following the client any more: everything passes through.
    Aside,
}

/// A header block being collected: the HEADERS frame and its CONTINUATION frames.
struct Block {
    stream: u32,
    /// The HEADERS frame's flags.
    flags: u8,
    /// The HEADERS frame's priority fields, if it had them.
    priority: Option<[u8; 5]>,
    /// The block's fragments, concatenated.
    fragment: Vec<u8>,
    /// The frames as received, to pass through unchanged.
    raw: Vec<u8>,
}

/// The filter of one connection's client-to-server bytes. Feed it what the socket gave
/// ([`feed`](Self::feed)), hand the server what [`output`](Self::output) holds.
pub(crate) struct AuthorityFix {
    state: State,
    /// Received bytes not yet processed.
    input: BytesMut,
    /// Processed bytes for the server.
    output: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    /// A block was re-encoded: every later one must be.
    reencoding: bool,
}

/// The client sent what the filter could not follow after it had re-encoded a block.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unfollowable(pub(crate) &'static str);

impl AuthorityFix {
    pub(crate) fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_BYTES);
        AuthorityFix {
            state: State::Preface(0),
            input: BytesMut::new(),
            output: BytesMut::new(),
            block: None,
            decoder,
            reencoding: false,
        }
    }

    /// Whether the filter has stepped aside and holds nothing: the connection can be read
    /// directly from now on.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, State::Aside) && self.input.is_empty() && self.output.is_empty()
    }

    /// The processed bytes, ready for the HTTP/2 server.
    pub(crate) fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    /// Takes bytes received from the client and processes what can be processed.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), Unfollowable> {
        if matches!(self.state, State::Aside) && self.input.is_empty() {
            self.output.extend_from_slice(bytes);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        loop {
            let progressed = match self.state {
                State::Aside => {
                    let rest = self.input.split();
                    self.output.unsplit(rest);
                    false
                }
                State::Preface(seen) => self.preface(seen),
                State::FrameHeader => self.frame_header()?,
                State::Payload(left) => {
                    let n = left.min(self.input.len());
                    let data = self.input.split_to(n);
                    self.output.unsplit(data);
                    self.state = if n == left {
                        State::FrameHeader
                    } else {
                        State::Payload(left - n)
                    };
                    n == left
                }
                State::BlockPayload(header) => self.block_payload(header)?,
            };
            if !progressed {
                return Ok(());
            }
        }
    }

    /// The end of the client's bytes: whatever is held back goes to the server as it came
    /// (an unfinished frame the server will refuse).
    pub(crate) fn finish(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        if let State::BlockPayload(header) = self.state {
            self.output.extend_from_slice(&header);
        }
        let rest = self.input.split();
        self.output.unsplit(rest);
        self.state = State::Aside;
    }

    fn preface(&mut self, seen: usize) -> bool {
        let n = (PREFACE.len() - seen).min(self.input.len());
        if self.input[..n] != PREFACE[seen..seen + n] {
            // Not HTTP/2 with prior knowledge (HTTP/1.1 for /metrics, or junk).
            self.state = State::Aside;
            return true;
        }
        let data = self.input.split_to(n);
        self.output.unsplit(data);
        if seen + n == PREFACE.len() {
            self.state = State::FrameHeader;
            true
        } else {
            self.state = State::Preface(seen + n);
            false
        }
    }

    fn frame_header(&mut self) -> Result<bool, Unfollowable> {
        if self.input.len() < FRAME_HEADER {
            return Ok(false);
        }
        let mut header = [0u8; FRAME_HEADER];
        header.copy_from_slice(&self.input[..FRAME_HEADER]);
        let length = frame_length(&header);
        let kind = header[3];
        let collecting = self.block.is_some();
        match kind {
            HEADERS if !collecting => {}
            CONTINUATION if collecting => {}
            _ if collecting => return self.step_aside("a frame inside a header block"),
            _ => {
                let data = self.input.split_to(FRAME_HEADER);
                self.output.unsplit(data);
                self.state = State::Payload(length);
                return Ok(true);
            }
        }
        let collected = self.block.as_ref().map_or(0, |b| b.raw.len());
        if collected + length > MAX_BLOCK_BYTES {
            return self.step_aside("a header block over the filter's bound");
        }
        self.input.advance(FRAME_HEADER);
        self.state = State::BlockPayload(header);
        Ok(true)
    }

    fn block_payload(&mut self, header: [u8; FRAME_HEADER]) -> Result<bool, Unfollowable> {
        let length = frame_length(&header);
        if self.input.len() < length {
            return Ok(false);
        }
        let payload = self.input.split_to(length);
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut block = match self.block.take() {
            Some(block) if block.stream == stream => block,
            Some(mut block) => {
                // A CONTINUATION of another stream: put everything back as it came.
                block.raw.extend_from_slice(&header);
                block.raw.extend_from_slice(&payload);
                self.block = Some(block);
                self.state = State::FrameHeader;
                return self.step_aside("a CONTINUATION frame of another stream");
            }
            None => Block {
                stream,
                flags,
                priority: None,
                fragment: Vec::new(),
                raw: Vec::new(),
            },
        };
        block.raw.extend_from_slice(&header);
        block.raw.extend_from_slice(&payload);
        let fragment = if kind == HEADERS {
            match headers_fragment(flags, &payload) {
                Some((priority, fragment)) => {
                    block.priority = priority;
                    fragment
                }
                None => {
                    self.block = Some(block);
                    self.state = State::FrameHeader;
                    return self.step_aside("a malformed HEADERS frame");
                }
            }
        } else {
            &payload[..]
        };
        block.fragment.extend_from_slice(fragment);
        self.state = State::FrameHeader;
        if flags & END_HEADERS == 0 {
            self.block = Some(block);
            return Ok(true);
        }
        self.end_block(block)?;
        Ok(true)
    }

    /// A whole header block: decoded to keep in step with the client, and passed on as it
    /// came or re-encoded.
    fn end_block(&mut self, block: Block) -> Result<(), Unfollowable> {
        let Ok(mut headers) = self.decoder.decode(&block.fragment) else {
            self.block = Some(block);
            return self.step_aside("an undecodable header block").map(|_| ());
        };
        let mut fixed = false;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && let Some(at) = value.windows(3).position(|w| w == b"://")
            {
                value.drain(..at + 3);
                fixed = true;
            }
        }
        if !(fixed || self.reencoding) {
            // The connection's authority is fine: nothing more to follow.
            self.output.extend_from_slice(&block.raw);
            self.state = State::Aside;
            return Ok(());
        }
        if fixed && !self.reencoding {
            self.reencoding = true;
            tracing::debug!(
                stream = block.stream,
                "an :authority with a scheme (etcd's Go client): the scheme is dropped and \
                 this connection's header blocks are re-encoded"
            );
        }
        self.write_block(&block, &headers);
        Ok(())
    }

    /// Writes `headers` as the block of `block`'s stream: literals without indexing, split
    /// into frames of at most [`MAX_WRITTEN_PAYLOAD`] bytes.
    fn write_block(&mut self, block: &Block, headers: &[(Vec<u8>, Vec<u8>)]) {
        let mut encoded = Vec::new();
        if let Some(priority) = block.priority {
            encoded.extend_from_slice(&priority);
        }
        for (name, value) in headers {
            encoded.push(0x00); // literal header field without indexing, new name
            write_string(&mut encoded, name);
            write_string(&mut encoded, value);
        }
        let mut chunks = encoded.chunks(MAX_WRITTEN_PAYLOAD).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let (kind, mut flags) = if first {
                (HEADERS, block.flags & (END_STREAM | PRIORITY))
            } else {
                (CONTINUATION, 0)
            };
            if last {
                flags |= END_HEADERS;
            }
            let length = chunk.len();
            self.output.put_u8((length >> 16) as u8);
            self.output.put_u8((length >> 8) as u8);
            self.output.put_u8(length as u8);
            self.output.put_u8(kind);
            self.output.put_u8(flags);
            self.output.put_u32(block.stream);
            self.output.extend_from_slice(chunk);
            first = false;
        }
    }

    /// Stops following the client: what is held back and everything after it passes through
    /// as it came — unless blocks were re-encoded, then the connection cannot go on.
    fn step_aside(&mut self, why: &'static str) -> Result<bool, Unfollowable> {
        if self.reencoding {
            return Err(Unfollowable(why));
        }
        tracing::debug!("HTTP/2 authority filter steps aside: {why}");
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        self.state = State::Aside;
        Ok(true)
    }
}

/// The payload length in a frame header (its first 3 bytes, big-endian; RFC 9113 §4.1).
fn frame_length(header: &[u8]) -> usize {
    header[..3]
        .iter()
        .fold(0, |length, &byte| length << 8 | usize::from(byte))
}

/// A HEADERS frame's priority fields (if flagged) and block fragment (without padding), or
/// `None` if the frame is too short for what its flags announce.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut padding = 0usize;
    if flags & PADDED != 0 {
        let (&pad, after) = rest.split_first()?;
        padding = usize::from(pad);
        rest = after;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields: [u8; 5] = rest.get(..5)?.try_into().ok()?;
        priority = Some(fields);
        rest = &rest[5..];
    }
    let end = rest.len().checked_sub(padding)?;
    Some((priority, &rest[..end]))
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // 7-bit prefix integer (RFC 7541 §5.1); the H bit stays 0.
    let mut len = bytes.len();
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        let n = payload.len();
        f.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn request(authority: &str, path: &str) -> Headers {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            // Not in HPACK's static table: the client's encoder adds it to its dynamic table
            // the first time and refers to it after.
            ("user-agent", "etcdctl/3.4"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    /// A client connection: the preface, a SETTINGS frame, then for each request a header
    /// block (encoded with a dynamic table, as clients do) and a DATA frame.
    fn client(requests: &[Headers]) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        for (i, headers) in requests.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
            bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
            bytes.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\x02hi"));
        }
        bytes
    }

    /// What the server sees: the frames of `bytes` after the preface, with every header block
    /// decoded by one decoder (as the server's).
    fn server_view(bytes: &[u8]) -> Vec<(u8, u32, Result<Headers, Vec<u8>>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let mut frames = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let n = frame_length(rest);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes(rest[5..9].try_into().unwrap());
            let payload = &rest[9..9 + n];
            rest = &rest[9 + n..];
            match kind {
                HEADERS | CONTINUATION => {
                    let (_, fragment) = if kind == HEADERS {
                        headers_fragment(flags, payload).unwrap()
                    } else {
                        (None, payload)
                    };
                    block.extend_from_slice(fragment);
                    if flags & END_HEADERS != 0 {
                        frames.push((HEADERS, stream, Ok(decoder.decode(&block).unwrap())));
                        block.clear();
                    }
                }
                _ => frames.push((kind, stream, Err(payload.to_vec()))),
            }
        }
        frames
    }

    fn filter(bytes: &[u8], piece: usize) -> Result<Vec<u8>, Unfollowable> {
        let mut fix = AuthorityFix::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece) {
            fix.feed(chunk)?;
            out.extend_from_slice(&fix.output().split());
        }
        fix.finish();
        out.extend_from_slice(&fix.output().split());
        Ok(out)
    }

    #[test]
    fn a_well_formed_connection_passes_through_unchanged() {
        let bytes = client(&[
            request("127.0.0.1:2379", "/a"),
            request("127.0.0.1:2379", "/b"),
        ]);
        for piece in [1, 7, 4096] {
            assert_eq!(
                filter(&bytes, piece).unwrap(),
                bytes,
                "fed {piece} bytes at a time"
            );
        }
        // After the first header block the filter steps aside: the connection is read
        // directly from then on.
        let first = client(&[request("127.0.0.1:2379", "/a")]);
        let mut fix = AuthorityFix::new();
        let headers_end = first.len() - (FRAME_HEADER + 7);
        fix.feed(&first[..headers_end]).unwrap();
        assert!(!fix.is_done(), "the block is handed over first");
        assert_eq!(fix.output().split().len(), headers_end);
        assert!(fix.is_done());
        // A client sends one authority per connection: a later block with a scheme is not
        // looked at (the HTTP/2 server refuses it, as without the filter).
        let mixed = client(&[request("a:1", "/a"), request("http://a:1", "/b")]);
        assert_eq!(filter(&mixed, 4096).unwrap(), mixed);
    }

    #[test]
    fn a_scheme_in_the_authority_is_dropped_and_later_blocks_still_decode() {
        let sent = [
            request("http://127.0.0.1:2379", "/first"),
            request("http://127.0.0.1:2379", "/etcdserverpb.KV/Range"),
            // The client's encoder now refers to its table for most of these.
            request("http://127.0.0.1:2379", "/etcdserverpb.KV/Put"),
            // (a client sends one authority per connection, but each block is looked at)
            request("https://[::1]:2379", "/etcdserverpb.Maintenance/Status"),
        ];
        let bytes = client(&sent);
        for piece in [1, 5, 4096] {
            let out = filter(&bytes, piece).unwrap();
            let view = server_view(&out);
            let blocks: Vec<Headers> = view
                .iter()
                .filter_map(|(_, _, h)| h.as_ref().ok().cloned())
                .collect();
            let want = [
                request("127.0.0.1:2379", "/first"),
                request("127.0.0.1:2379", "/etcdserverpb.KV/Range"),
                request("127.0.0.1:2379", "/etcdserverpb.KV/Put"),
                request("[::1]:2379", "/etcdserverpb.Maintenance/Status"),
            ];
            assert_eq!(blocks, want, "fed {piece} bytes at a time");
            // The DATA frames are untouched, on their streams.
            let data: Vec<(u32, Vec<u8>)> = view
                .into_iter()
                .filter(|(kind, _, _)| *kind == 0x0)
                .map(|(_, stream, d)| (stream, d.unwrap_err()))
                .collect();
            assert_eq!(data.len(), 4);
            assert!(data.iter().all(|(_, d)| d == b"\0\0\0\0\x02hi"));
            assert_eq!(data[3].0, 7);
        }
    }

    #[test]
    fn after_a_reencoded_block_every_block_is_reencoded() {
        // The first block is re-encoded, so the server never adds its user-agent to its
        // table; the second refers to the client's entry and must not reach the server as
        // it is, even though its authority is fine.
        let bytes = client(&[request("http://a:1", "/x"), request("a:1", "/y")]);
        let out = filter(&bytes, 4096).unwrap();
        let blocks: Vec<Headers> = server_view(&out)
            .into_iter()
            .filter_map(|(_, _, h)| h.ok())
            .collect();
        assert_eq!(blocks, [request("a:1", "/x"), request("a:1", "/y")]);
    }

    #[test]
    fn a_block_in_continuation_frames_with_padding_and_priority_is_followed() {
        let mut encoder = loona_hpack::Encoder::new();
        let headers = request("http://h:1", "/p");
        let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let (a, b) = block.split_at(block.len() / 2);
        let mut first = vec![3u8]; // pad length
        first.extend_from_slice(&[0, 0, 0, 0, 16]); // priority: no dependency, weight 16
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0, 0]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &first));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let out = filter(&bytes, 3).unwrap();
        let view = server_view(&out);
        assert_eq!(view.len(), 1);
        assert_eq!(view[0].2, Ok(request("h:1", "/p")));
        // END_STREAM and the priority fields are kept, the padding dropped.
        let flags = out[PREFACE.len() + 4];
        assert_eq!(flags, END_STREAM | PRIORITY | END_HEADERS);
    }

    #[test]
    fn what_is_not_followable_passes_through_or_closes() {
        // HTTP/1.1 (GET /metrics on the client port): untouched.
        let http1 = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(filter(&http1, 4).unwrap(), http1);
        // An undecodable block before any re-encoding: passed through for the server to
        // refuse, and everything after it too.
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        bytes.extend(frame(0x0, 0, 1, b"x"));
        assert_eq!(filter(&bytes, 2).unwrap(), bytes);
        // A truncated connection: what was held back is handed over at the end.
        let whole = client(&[request("a:1", "/")]);
        let cut = &whole[..whole.len() - 3];
        assert_eq!(filter(cut, 10).unwrap(), cut);
        // After a re-encoding, an undecodable block cannot be passed through: closed.
        let mut bytes = client(&[request("http://a:1", "/")]);
        bytes.extend(frame(
            HEADERS,
            END_HEADERS,
            3,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        assert!(filter(&bytes, 64).is_err());
        // A block over the bound: passed through.
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, 0, 1, &vec![0u8; MAX_BLOCK_BYTES + 1]));
        assert_eq!(filter(&bytes, 4096).unwrap(), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_are_passed_on_whole() {
        // Deterministic pseudo-random streams after a valid preface: whatever the filter
        // makes of them, it neither panics nor loses or invents bytes while it does not
        // re-encode (it never does here: no block decodes to an authority with a scheme).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..300 {
            let mut bytes = PREFACE.to_vec();
            let len = 20 + round * 7;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push((x >> 24) as u8);
            }
            if let Ok(out) = filter(&bytes, 1 + round % 13) {
                assert_eq!(out.len(), bytes.len(), "round {round}");
            }
        }
    }
}
