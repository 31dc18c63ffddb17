//! The decoder against RFC 7541's own examples (Appendix C), against a real encoder's blocks joined
//! at every block, and against losses and malformed blocks: a known text is always the right one.

use loona_hpack::{Encoder, encoder::encode_integer};

use super::*;

type Header = (Vec<u8>, Vec<u8>);

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
}

fn headers(list: &[(&str, &str)]) -> Vec<Header> {
    list.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

fn decode(decoder: &mut Decoder, block: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    decoder.decode(block, &mut fields).unwrap();
    fields
}

/// Every known name and value in `fields` is the one in `truth`; returns how many fields were
/// known whole.
fn check(fields: &[Field], truth: &[Header], context: &str) -> usize {
    assert_eq!(fields.len(), truth.len(), "{context}");
    let mut whole = 0;
    for (field, (name, value)) in fields.iter().zip(truth) {
        if let Some(got) = field.name.bytes() {
            assert_eq!(got, &name[..], "{context}: a wrong name");
        }
        if let Some(got) = field.value.bytes() {
            assert_eq!(got, &value[..], "{context}: a wrong value for {}", String::from_utf8_lossy(name));
        }
        whole += usize::from(field.name.bytes().is_some() && field.value.bytes().is_some());
    }
    whole
}

/// RFC 7541 C.3 (requests, no Huffman) and C.4 (the same requests, Huffman-coded).
fn rfc_requests() -> [Vec<Header>; 3] {
    [
        headers(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ]),
        headers(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ]),
        headers(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]),
    ]
}

const C3: [&str; 3] = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
];
const C4: [&str; 3] = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
];

#[test]
fn the_rfcs_request_examples_decode_exactly_from_the_start() {
    for blocks in [C3, C4] {
        let mut decoder = Decoder::new(true);
        for (block, truth) in blocks.iter().zip(rfc_requests()) {
            let fields = decode(&mut decoder, &hex(block));
            assert_eq!(check(&fields, &truth, block), truth.len());
        }
    }
}

#[test]
fn joined_at_the_second_request_the_entry_inserted_before_is_unknown_and_the_rest_exact() {
    let truth = rfc_requests();
    let mut decoder = Decoder::new(false);
    // C.4.2: index 62 is the :authority the first request inserted, before sonde joined.
    let second = decode(&mut decoder, &hex(C4[1]));
    check(&second, &truth[1], "second");
    assert_eq!(second[3], Field { name: Text::Unknown, value: Text::Unknown });
    assert_eq!(second[4].value.bytes(), Some(&b"no-cache"[..]));
    // C.4.3: 62 is now cache-control (seen inserted), 63 the unseen :authority.
    let third = decode(&mut decoder, &hex(C4[2]));
    check(&third, &truth[2], "third");
    assert_eq!(third[3], Field { name: Text::Unknown, value: Text::Unknown });
    assert_eq!(third[4].name.bytes(), Some(&b"custom-key"[..]));
}

/// A conversation of `n` blocks from a real encoder: a few paths, authorities and custom headers
/// repeating, as a client's requests do, so that later blocks reference earlier insertions.
fn conversation(n: usize, table_size: Option<usize>) -> Vec<(Vec<u8>, Vec<Header>)> {
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..n {
        let mut list = headers(&[(":method", if i % 3 == 0 { "POST" } else { "GET" }), (":scheme", "http")]);
        list.push((b":path".to_vec(), format!("/svc.Api/Call{}", rng.usize(0..6)).into_bytes()));
        list.push((b":authority".to_vec(), format!("svc-{}.local:8080", rng.usize(0..3)).into_bytes()));
        for _ in 0..rng.usize(0..4) {
            let k = rng.usize(0..12);
            list.push((
                format!("x-header-{k}").into_bytes(),
                format!("value-{}", rng.usize(0..4)).into_bytes(),
            ));
        }
        let mut block = Vec::new();
        if i == 0
            && let Some(size) = table_size
        {
            // A size update starts the first block, as an encoder told a smaller limit sends it.
            let mut update = encode_integer(size, 5);
            update[0] |= 0x20;
            block.extend(update);
            encoder.set_max_table_size(size);
        }
        block.extend(encoder.encode(list.iter().map(|(n, v)| (&n[..], &v[..]))));
        out.push((block, list));
    }
    out
}

#[test]
fn joined_at_any_block_every_known_field_is_right_and_later_insertions_are_exact() {
    for table_size in [None, Some(256)] {
        let blocks = conversation(60, table_size);
        let mut whole_from_start = 0;
        let mut decoder = Decoder::new(true);
        for (i, (block, truth)) in blocks.iter().enumerate() {
            whole_from_start += check(&decode(&mut decoder, block), truth, &format!("block {i}"));
        }
        let total: usize = blocks.iter().map(|(_, t)| t.len()).sum();
        assert_eq!(whole_from_start, total, "from the start every field is known");
        for join in 1..blocks.len() {
            let mut decoder = Decoder::new(false);
            let mut whole = 0;
            for (i, (block, truth)) in blocks[join..].iter().enumerate() {
                whole += check(&decode(&mut decoder, block), truth, &format!("joined at {join}, block {i}"));
            }
            let seen: usize = blocks[join..].iter().map(|(_, t)| t.len()).sum();
            assert!(
                whole > seen / 2,
                "joined at {join}: only {whole} of {seen} fields known (table {table_size:?})"
            );
        }
    }
}

#[test]
fn a_lost_block_makes_later_references_unknown_never_wrong() {
    let blocks = conversation(40, None);
    for lost in 0..blocks.len() {
        let mut decoder = Decoder::new(true);
        for (i, (block, truth)) in blocks.iter().enumerate() {
            if i == lost {
                decoder.lose();
                continue;
            }
            check(&decode(&mut decoder, block), truth, &format!("block {lost} lost, block {i}"));
        }
        assert_eq!(decoder.losses(), 1);
    }
}

#[test]
fn a_cut_block_is_an_error_and_the_table_is_forgotten() {
    let blocks = conversation(30, None);
    for (cut_block, (block, _)) in blocks.iter().enumerate() {
        for cut in 1..block.len() {
            let mut decoder = Decoder::new(true);
            for (i, (earlier, truth)) in blocks[..cut_block].iter().enumerate() {
                check(&decode(&mut decoder, earlier), truth, &format!("block {i}"));
            }
            let mut fields = Vec::new();
            // A cut between two fields still decodes: what follows is then a lost part of the block,
            // which the framing layer reports as a loss.
            if decoder.decode(&block[..cut], &mut fields).is_ok() {
                decoder.lose();
            }
            for (i, (later, truth)) in blocks[cut_block + 1..].iter().enumerate() {
                check(
                    &decode(&mut decoder, later),
                    truth,
                    &format!("block {cut_block} cut at {cut}, later block {i}"),
                );
            }
        }
    }
}

#[test]
fn eviction_keeps_indices_right_in_a_small_table() {
    // A table of 100 bytes: each entry below takes 32 + 1 + 10 = 43, so two fit.
    let mut decoder = Decoder::new(true);
    let mut block = vec![0x20 | 31, 100 - 31]; // size update to 100
    for (name, value) in [("a", "0123456789"), ("b", "0123456789"), ("c", "0123456789")] {
        block.push(0x40);
        block.push(name.len() as u8);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    let fields = decode(&mut decoder, &block);
    assert_eq!(fields.len(), 3);
    // 62 is c, 63 is b; a was evicted, and a direction followed from its start may not name 64.
    let fields = decode(&mut decoder, &[0x80 | 62, 0x80 | 63]);
    assert_eq!(fields[0].name.bytes(), Some(&b"c"[..]));
    assert_eq!(fields[1].name.bytes(), Some(&b"b"[..]));
    let mut fields = Vec::new();
    assert_eq!(decoder.decode(&[0x80 | 64], &mut fields), Err(HpackError::PastTable));
    // After that error the table is forgotten: 62 is unknown, not c.
    assert_eq!(decode(&mut decoder, &[0x80 | 62])[0].name, Text::Unknown);
}

#[test]
fn an_entry_with_an_unknown_name_keeps_the_indices_of_the_others() {
    // Joined late: a literal indexed with the name of unseen entry 62, then one with a new name.
    let mut decoder = Decoder::new(false);
    let block = [&[0x40 | 62, 3][..], b"one", &[0x40, 1], b"k", &[3], b"two"].concat();
    let fields = decode(&mut decoder, &block);
    assert_eq!(fields[0], Field { name: Text::Unknown, value: Text::Bytes(b"one"[..].into()) });
    // Now 62 is k: two, 63 the entry with the unknown name.
    let fields = decode(&mut decoder, &[0x80 | 62, 0x80 | 63, 0x80 | 64]);
    assert_eq!(fields[0].value.bytes(), Some(&b"two"[..]));
    assert_eq!(fields[1], Field { name: Text::Unknown, value: Text::Bytes(b"one"[..].into()) });
    assert_eq!(fields[2], Field { name: Text::Unknown, value: Text::Unknown });
}

#[test]
fn malformed_blocks_are_errors() {
    let cases: [(&[u8], HpackError); 6] = [
        (&[0x80], HpackError::IndexZero),
        (&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], HpackError::Integer),
        (&[0x40, 0x05, b'a'], HpackError::Truncated),
        (&[0x40, 0x7f, 0xff, 0x7f], HpackError::StringTooLong),
        (&[0x82, 0x20], HpackError::SizeUpdate),
        // A Huffman string padded with a zero bit pattern (padding must be the EOS prefix, ones).
        (&[0x40, 0x81, 0x00, 0x00], HpackError::Huffman),
    ];
    for (block, error) in cases {
        let mut fields = Vec::new();
        assert_eq!(Decoder::new(true).decode(block, &mut fields), Err(error), "{block:02x?}");
    }
    let mut decoder = Decoder::new(true);
    decoder.set_settings_limit(1024);
    assert_eq!(decoder.decode(&[0x3f, 0xe2, 0x0f], &mut Vec::new()), Err(HpackError::SizeUpdate));
}
