/*
 * Synthetic frames' pure C core (no Python): headers and the Internet checksum,
 * what bridge/reinject/_segments.c runs per frame and byte, kept apart so that
 * fuzz/fuzz_segments.c runs exactly this code under libFuzzer and the
 * sanitizers, against a checksum computed byte by byte.
 */
#ifndef BRIDGE_SEGMENTS_CORE_H
#define BRIDGE_SEGMENTS_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TTL 64
#define PROTO_TCP 6
#define WINDOW 65535
#define IP4_HEADER 20
#define IP6_HEADER 40
#define TCP_HEADER 20
#define MAX_LINK_HEADER 64

/* One's-complement sum of big-endian 16-bit words, added to sum (not folded).
   The sum is taken in the machine's own byte order, 32 bits at a time into a
   64-bit accumulator (no carry is lost before 2^32 words; the compiler keeps it in
   vector registers), then folded to 16 bits and, on a little-endian machine, its
   bytes swapped: the one's-complement sum does not depend on the byte order
   (RFC 1071, 2.B), and an odd last byte is the low byte of its native word. */
static uint64_t sum_words(const uint8_t *p, ptrdiff_t n, uint64_t sum)
{
    uint64_t native = 0;
    for (; n >= 32; p += 32, n -= 32) {
        uint32_t w[8];
        memcpy(w, p, sizeof w);
        for (int i = 0; i < 8; i++)
            native += w[i];
    }
    for (; n >= 4; p += 4, n -= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        native += w;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        native += w;
        p += 2;
        n -= 2;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (n)
        native += p[0];
    while (native >> 16)
        native = (native & 0xFFFF) + (native >> 16);
    return sum + (((native & 0xFF) << 8) | (native >> 8));
#else
    if (n)
        native += (uint32_t)p[0] << 8;
    return sum + native;
#endif
}

static uint16_t fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

typedef struct {
    const uint8_t *eth;
    ptrdiff_t eth_len;
    const uint8_t *src, *dst;
    ptrdiff_t addr_len; /* 4 or 16 */
    unsigned sport, dport;
    uint64_t addr_sum; /* word sum of both addresses */
} Endpoints;

enum { E_LINK_HEADER = -1, E_ADDRESSES = -2, E_PORT = -3 };

/* The bytes of one frame of e carrying length bytes of payload. */
static inline ptrdiff_t frame_size(const Endpoints *e, ptrdiff_t length)
{
    return e->eth_len + (e->addr_len == 4 ? IP4_HEADER : IP6_HEADER) + TCP_HEADER + length;
}

/* One frame at p (frame_size bytes); ip_id advances for IPv4. */
static void write_frame(uint8_t *p, const Endpoints *e, uint32_t seq, uint32_t ack, unsigned flags,
                        const uint8_t *payload, ptrdiff_t length, unsigned *ip_id)
{
    ptrdiff_t ip_header = e->addr_len == 4 ? IP4_HEADER : IP6_HEADER;
    ptrdiff_t tcp_length = TCP_HEADER + length;
    memcpy(p, e->eth, (size_t)e->eth_len);
    uint8_t *ip = p + e->eth_len;
    if (e->addr_len == 4) {
        ip[0] = 0x45;
        ip[1] = 0;
        put16(ip + 2, (uint32_t)(IP4_HEADER + tcp_length));
        put16(ip + 4, *ip_id);
        put16(ip + 6, 0x4000); /* DF */
        ip[8] = TTL;
        ip[9] = PROTO_TCP;
        put16(ip + 10, 0);
        memcpy(ip + 12, e->src, 4);
        memcpy(ip + 16, e->dst, 4);
        put16(ip + 10, fold(sum_words(ip, IP4_HEADER, 0)));
        *ip_id = (*ip_id + 1) & 0xFFFF;
    } else {
        put32(ip, 0x60000000);
        put16(ip + 4, (uint32_t)tcp_length);
        ip[6] = PROTO_TCP;
        ip[7] = TTL;
        memcpy(ip + 8, e->src, 16);
        memcpy(ip + 24, e->dst, 16);
    }
    uint8_t *tcp = ip + ip_header;
    put16(tcp, e->sport);
    put16(tcp + 2, e->dport);
    put32(tcp + 4, seq);
    put32(tcp + 8, ack);
    tcp[12] = 5 << 4;
    tcp[13] = (uint8_t)flags;
    put16(tcp + 14, WINDOW);
    put16(tcp + 16, 0);
    put16(tcp + 18, 0);
    if (length)
        memcpy(tcp + TCP_HEADER, payload, (size_t)length);
    /* pseudo-header (addresses, protocol, TCP length) + header + payload */
    uint64_t sum = e->addr_sum + PROTO_TCP + (uint64_t)tcp_length;
    sum = sum_words(tcp, tcp_length, sum);
    put16(tcp + 16, fold(sum));
}

/* The endpoints of frames sent from src to dst (addresses of addr_len bytes). */
static int endpoints_init(Endpoints *e, const uint8_t *eth, ptrdiff_t eth_len, const uint8_t *src, const uint8_t *dst,
                          ptrdiff_t src_len, ptrdiff_t dst_len, unsigned sport, unsigned dport)
{
    if (eth_len > MAX_LINK_HEADER)
        return E_LINK_HEADER;
    if (src_len != dst_len || (src_len != 4 && src_len != 16))
        return E_ADDRESSES;
    if (sport > 0xFFFF || dport > 0xFFFF)
        return E_PORT;
    e->eth = eth;
    e->eth_len = eth_len;
    e->src = src;
    e->dst = dst;
    e->addr_len = src_len;
    e->sport = sport;
    e->dport = dport;
    e->addr_sum = sum_words(src, src_len, 0);
    e->addr_sum = sum_words(dst, dst_len, e->addr_sum);
    return 0;
}

#define F_ACK 0x10
#define F_PSH 0x08

/* Does one frame of e carry an mss of this size (the IPv4 total length field bounds it)? */
static inline int mss_fits(const Endpoints *e, ptrdiff_t mss)
{
    return mss >= 1 && mss <= 65535 - TCP_HEADER - (e->addr_len == 4 ? IP4_HEADER : 0);
}

/*
 * The frames of one plaintext event, in order: the data cut into mss-sized
 * segments from send (ACK, PSH|ACK on the last one), each followed by the
 * peer's pure ACK from recv when ack_each, else the last one only.  One
 * definition of that order for every writer of it (segments(), segments_pcap(),
 * the fuzzer).
 */
typedef struct {
    const Endpoints *send, *recv;
    const uint8_t *data;
    ptrdiff_t len, mss, at; /* at: the next data byte */
    int ack_each, ack_due;  /* ack_due: the peer's ACK comes next */
    uint32_t seq, peer;     /* seq: where send's next byte goes */
} SegmentWalk;

/* One frame of the walk: write_frame's arguments but ip_id. */
typedef struct {
    const Endpoints *e;
    uint32_t seq, ack;
    unsigned flags;
    const uint8_t *payload;
    ptrdiff_t length;
} SegmentFrame;

static inline void walk_init(SegmentWalk *w, const Endpoints *send, const Endpoints *recv, const uint8_t *data,
                             ptrdiff_t len, ptrdiff_t mss, int ack_each, uint32_t seq, uint32_t peer)
{
    w->send = send, w->recv = recv, w->data = data, w->len = len, w->mss = mss, w->at = 0;
    w->ack_each = ack_each, w->ack_due = 0, w->seq = seq, w->peer = peer;
}

/* The walk's next frame into *f: 0 once there is none. */
static inline int walk_next(SegmentWalk *w, SegmentFrame *f)
{
    if (w->ack_due) {
        w->ack_due = 0;
        f->e = w->recv, f->seq = w->peer, f->ack = w->seq, f->flags = F_ACK, f->payload = NULL, f->length = 0;
        return 1;
    }
    if (w->at >= w->len)
        return 0;
    ptrdiff_t length = w->len - w->at < w->mss ? w->len - w->at : w->mss;
    int last = w->at + length == w->len;
    f->e = w->send, f->seq = w->seq, f->ack = w->peer, f->flags = last ? (F_ACK | F_PSH) : F_ACK;
    f->payload = w->data + w->at, f->length = length;
    w->at += length;
    w->seq += (uint32_t)length;
    w->ack_due = w->ack_each || last;
    return 1;
}

static inline const char *endpoints_error(int code)
{
    switch (code) {
    case E_LINK_HEADER:
        return "link header longer than 64 bytes";
    case E_ADDRESSES:
        return "addresses must both be 4 (IPv4) or 16 (IPv6) bytes";
    default:
        return "port out of range";
    }
}

#endif
