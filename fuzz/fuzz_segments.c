/*
 * libFuzzer harness of the synthetic frames' pure C core
 * (bridge/reinject/_segments_core.h): link, IP and TCP headers and the Internet
 * checksum (summed in the machine's byte order, 32 bits at a time), exactly the
 * code the CPython binding (bridge/reinject/_segments.c) runs.
 *
 * Input: [options: 1 byte (bit 0: IPv6, bit 1: the peer's ACK after each
 * segment)][link header length: 1 byte, up to 80: beyond 64 is refused][mss:
 * 2 bytes][seq: 4 bytes][IPv4 id: 2 bytes][32 bytes: the addresses, the link
 * header][payload].  The payload is cut into segments by the core's walk (what
 * segments() and segments_pcap() use: checked here against its definition), each
 * frame written into a buffer of exactly frame_size() bytes (AddressSanitizer
 * sees any write beyond it).  Checked with abort(), against a checksum computed
 * here byte by byte (RFC 1071's definition): the IPv4 header and the TCP segment
 * with its pseudo-header verify to zero; the lengths, sequence numbers and the
 * payload are where they belong.
 *
 * Build and run (tests/test_native.py does):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *         -I bridge/reinject fuzz/fuzz_segments.c -o build/fuzz_segments
 *   build/fuzz_segments -runs=200000 CORPUS_DIR
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_segments_core.h"
#include "check.h"

/* RFC 1071 as written: big-endian 16-bit words, an odd last byte padded with zero. */
static uint32_t reference_sum(const uint8_t *p, size_t n, uint32_t sum)
{
    for (size_t i = 0; i + 1 < n; i += 2) {
        sum += (uint32_t)p[i] << 8 | p[i + 1];
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    if (n & 1) {
        sum += (uint32_t)p[n - 1] << 8;
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    return sum;
}

static uint16_t reference_checksum(const uint8_t *p, size_t n, uint32_t sum)
{
    sum = reference_sum(p, n, sum);
    return (uint16_t)~sum;
}

static unsigned rd16(const uint8_t *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void check_frame(const uint8_t *f, const Endpoints *e, uint32_t seq, const uint8_t *payload, ptrdiff_t length)
{
    const uint8_t *ip = f + e->eth_len;
    CHECK(memcmp(f, e->eth, (size_t)e->eth_len) == 0);
    ptrdiff_t ip_header = e->addr_len == 4 ? IP4_HEADER : IP6_HEADER;
    const uint8_t *tcp = ip + ip_header;
    size_t tcp_length = (size_t)(TCP_HEADER + length);
    uint32_t pseudo = PROTO_TCP + (uint32_t)tcp_length;
    if (e->addr_len == 4) {
        CHECK(rd16(ip + 2) == IP4_HEADER + tcp_length);
        CHECK(reference_checksum(ip, IP4_HEADER, 0) == 0);
        pseudo = reference_sum(ip + 12, 8, pseudo);
    } else {
        CHECK(rd16(ip + 4) == tcp_length);
        pseudo = reference_sum(ip + 8, 32, pseudo);
    }
    CHECK(rd16(tcp) == e->sport && rd16(tcp + 2) == e->dport && rd32(tcp + 4) == seq);
    CHECK(reference_checksum(tcp, tcp_length, pseudo) == 0);
    CHECK(length == 0 || memcmp(tcp + TCP_HEADER, payload, (size_t)length) == 0);
}

static void emit(const Endpoints *e, uint32_t seq, uint32_t ack, unsigned flags, const uint8_t *payload,
                 ptrdiff_t length, unsigned *ip_id)
{
    ptrdiff_t size = frame_size(e, length);
    uint8_t *frame = malloc((size_t)size); /* exactly: writes beyond are caught */
    CHECK(frame != NULL);
    write_frame(frame, e, seq, ack, flags, payload, length, ip_id);
    check_frame(frame, e, seq, payload, length);
    free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 42)
        return 0;
    int ipv6 = data[0] & 1, ack_each = data[0] & 2;
    ptrdiff_t eth_len = data[1] % 81;
    ptrdiff_t mss = (ptrdiff_t)rd16(data + 2);
    uint32_t seq = rd32(data + 4), peer = ~seq;
    unsigned ip_id = rd16(data + 8);
    const uint8_t *src = data + 10, *dst = ipv6 ? data + 26 : data + 14, *eth = data + 10;
    ptrdiff_t addr_len = ipv6 ? 16 : 4;
    uint8_t link[81];
    memset(link, 0, sizeof link);
    memcpy(link, eth, (size_t)(eth_len < 32 ? eth_len : 32));
    const uint8_t *payload = data + 42;
    ptrdiff_t length = (ptrdiff_t)size - 42;
    Endpoints send, recv;
    int rc = endpoints_init(&send, link, eth_len, src, dst, addr_len, addr_len, 443, 51000);
    CHECK((rc == E_LINK_HEADER) == (eth_len > MAX_LINK_HEADER));
    if (rc < 0)
        return 0;
    CHECK(endpoints_init(&recv, link, eth_len, dst, src, addr_len, addr_len, 51000, 443) == 0);
    CHECK(endpoints_init(&recv, link, eth_len, dst, src, 4, 16, 51000, 443) == E_ADDRESSES);
    if (!mss_fits(&send, mss))
        return 0;
    SegmentWalk w;
    SegmentFrame f;
    ptrdiff_t sent = 0, frames = 0, acks = 0;
    walk_init(&w, &send, &recv, payload, length, mss, ack_each, seq, peer);
    while (walk_next(&w, &f)) { /* as segments() cuts them */
        CHECK(f.length <= mss && (f.e == &recv) == (f.length == 0));
        if (f.e == &send) {
            CHECK(f.payload == payload + sent && f.seq == seq + (uint32_t)sent && f.ack == peer);
            sent += f.length;
            CHECK((f.flags == (F_ACK | F_PSH)) == (sent == length));
        } else {
            CHECK(f.seq == peer && f.ack == seq + (uint32_t)sent && f.flags == F_ACK);
            acks++;
        }
        emit(f.e, f.seq, f.ack, f.flags, f.payload, f.length, &ip_id);
        frames++;
    }
    ptrdiff_t pieces = (length + mss - 1) / mss;
    CHECK(sent == length && w.seq == seq + (uint32_t)length);
    CHECK(acks == (pieces == 0 ? 0 : ack_each ? pieces : 1) && frames == pieces + acks);
    return 0;
}
