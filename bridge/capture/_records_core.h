/*
 * The capture readers' pure C core (no Python): what bridge/capture/_records.c
 * runs per record or frame on bytes it did not write, kept apart so that
 * fuzz/fuzz_records.c runs exactly this code under libFuzzer and the sanitizers.
 *
 *   next_record   one classic pcap record header, checked against the bytes at hand
 *   v3_measure    a TPACKET_V3 ring block's frames: how many, how many bytes
 *   v3_fill       the same frames copied into one buffer, where each lies
 *
 * Every offset read from the input is checked against the buffer's size before
 * it is used; the ring's are also checked to stay within the ring, and a frame's
 * bytes to end before the next frame's header (a block that does not fit is an
 * error, V3_*): a block's frames copied out are never more than the ring's bytes
 * and 4 per frame (the tags put back).
 */
#ifndef BRIDGE_RECORDS_CORE_H
#define BRIDGE_RECORDS_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "_batch.h"

static inline uint32_t rd32(const uint8_t *p, int little)
{
    return little ? ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24)
                  : ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3]);
}

/* ------------------------------------------------------------------------- */
/* classic pcap                                                                */

enum { RECORD_OK = 0, RECORD_SHORT = 1, RECORD_ABSURD = 2 };

/* The classic pcap record at pos of p[0..n): RECORD_OK (*r: its time, where its bytes
   lie, its lengths), RECORD_SHORT (*need: the bytes it needs from pos) or RECORD_ABSURD
   (its captured length is beyond limit: *absurd).  0 <= pos <= n, record_header >= 16. */
static int next_record(const uint8_t *p, ptrdiff_t n, ptrdiff_t pos, int little, ptrdiff_t record_header,
                       long long frac_mult, unsigned long long limit, BatchRecord *r, ptrdiff_t *need,
                       long long *absurd)
{
    if (n - pos < record_header) {
        *need = record_header;
        return RECORD_SHORT;
    }
    uint32_t sec = rd32(p + pos, little), frac = rd32(p + pos + 4, little);
    uint32_t incl = rd32(p + pos + 8, little), orig = rd32(p + pos + 12, little);
    if (incl > limit) {
        *absurd = incl;
        *need = record_header;
        return RECORD_ABSURD;
    }
    ptrdiff_t start = pos + record_header;
    if ((ptrdiff_t)incl > n - start) {
        *need = record_header + (ptrdiff_t)incl;
        return RECORD_SHORT;
    }
    r->timestamp_ns = (long long)sec * 1000000000LL + (long long)frac * frac_mult;
    r->offset = (uint64_t)start;
    r->length = incl;
    r->orig_len = orig;
    return RECORD_OK;
}

/* ------------------------------------------------------------------------- */
/* TPACKET_V3 ring blocks (linux/if_packet.h)                                  */

#define TP_STATUS_VLAN_VALID (1u << 4)
#define TP_STATUS_VLAN_TPID_VALID (1u << 6)
#define BLOCK_NUM_PKTS 12
#define BLOCK_FIRST 16
#define V3_HEADER 48 /* the fields read: up to tp_vlan_tpid at 36 */

enum { V3_OK = 0, V3_BLOCK_OUTSIDE = -1, V3_HEADER_OUTSIDE = -2, V3_FRAME_OUTSIDE = -3 };

static inline const char *v3_error(int code)
{
    switch (code) {
    case V3_BLOCK_OUTSIDE:
        return "block offset outside the ring";
    case V3_HEADER_OUTSIDE:
        return "a TPACKET_V3 frame header outside the ring";
    default:
        return "a TPACKET_V3 frame outside the ring";
    }
}

static inline uint32_t rd32n(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint16_t rd16n(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* One tpacket3_hdr's frame. */
typedef struct {
    long long timestamp_ns; /* the kernel's, else the wall clock's */
    ptrdiff_t start;        /* of the frame's bytes in the ring */
    uint32_t captured;      /* bytes in the ring (at most snaplen) */
    uint32_t length;        /* on the wire, the tag put back included */
    uint32_t next;          /* tp_next_offset: 0 on the block's last frame */
    int tagged;             /* the kernel stripped an 802.1Q tag: put back (4 bytes more) */
    uint16_t tci, tpid;
} V3Frame;

/* The frame whose header is at position of the ring r[0..size) (its block at block). */
static int v3_frame(const uint8_t *r, ptrdiff_t size, ptrdiff_t block, ptrdiff_t position, ptrdiff_t snaplen,
                    V3Frame *f)
{
    if (position < block || position > size - V3_HEADER)
        return V3_HEADER_OUTSIDE;
    const uint8_t *h = r + position;
    uint32_t sec = rd32n(h + 4), nsec = rd32n(h + 8), status = rd32n(h + 20);
    f->next = rd32n(h);
    f->captured = rd32n(h + 12);
    f->length = rd32n(h + 16);
    if ((ptrdiff_t)f->captured > snaplen)
        f->captured = (uint32_t)snaplen;
    f->start = position + rd16n(h + 24);
    if (f->start > size || (ptrdiff_t)f->captured > size - f->start)
        return V3_FRAME_OUTSIDE;
    /* The kernel lays a block's frames one after the other: a frame's bytes end before
       the next header (else frames could overlap, and their copies outgrow the ring). */
    if (f->next != 0 && f->start + (ptrdiff_t)f->captured > position + (ptrdiff_t)f->next)
        return V3_FRAME_OUTSIDE;
    f->tagged = (status & TP_STATUS_VLAN_VALID) && f->captured >= 12;
    if (f->tagged) {
        f->tci = rd16n(h + 32);
        f->tpid = (status & TP_STATUS_VLAN_TPID_VALID) ? rd16n(h + 36) : 0x8100;
        f->length += 4;
    }
    f->timestamp_ns = (long long)sec * 1000000000LL + nsec;
    if (f->timestamp_ns == 0) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        f->timestamp_ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    }
    return V3_OK;
}

static inline uint32_t v3_bytes(const V3Frame *f)
{
    return f->captured + (f->tagged ? 4 : 0);
}

/* The block at offset block of the ring r[0..size) (snaplen >= 0): *frames, the frames
   the kernel put there, and *total, their bytes with the tags put back. */
static int v3_measure(const uint8_t *r, ptrdiff_t size, ptrdiff_t block, ptrdiff_t snaplen, ptrdiff_t *frames,
                      ptrdiff_t *total)
{
    *frames = *total = 0;
    if (block < 0 || block > size - BLOCK_FIRST - 4 || snaplen < 0)
        return V3_BLOCK_OUTSIDE;
    uint32_t count = rd32n(r + block + BLOCK_NUM_PKTS);
    ptrdiff_t position = block + (ptrdiff_t)rd32n(r + block + BLOCK_FIRST);
    for (uint32_t i = 0; i < count; i++) {
        V3Frame f;
        int rc = v3_frame(r, size, block, position, snaplen, &f);
        if (rc != V3_OK)
            return rc;
        *total += v3_bytes(&f);
        *frames += 1;
        if (f.next == 0)
            break;
        position += f.next;
    }
    return V3_OK;
}

/* The frame's bytes at d (v3_bytes of them): the tag put back after the MACs. */
static void v3_copy(uint8_t *d, const uint8_t *r, const V3Frame *f)
{
    if (f->tagged) {
        memcpy(d, r + f->start, 12);
        d[12] = (uint8_t)(f->tpid >> 8), d[13] = (uint8_t)f->tpid, d[14] = (uint8_t)(f->tci >> 8);
        d[15] = (uint8_t)f->tci;
        memcpy(d + 16, r + f->start + 12, f->captured - 12);
    } else {
        memcpy(d, r + f->start, f->captured);
    }
}

/* After v3_measure gave V3_OK, frames and total for the same block: the frames copied
   back to back into dst (total bytes), records[i] where frame i lies there. */
static void v3_fill(const uint8_t *r, ptrdiff_t size, ptrdiff_t block, ptrdiff_t snaplen, ptrdiff_t frames,
                    uint8_t *dst, BatchRecord *records)
{
    ptrdiff_t position = block + (ptrdiff_t)rd32n(r + block + BLOCK_FIRST), offset = 0;
    for (ptrdiff_t i = 0; i < frames; i++) {
        V3Frame f;
        v3_frame(r, size, block, position, snaplen, &f); /* as v3_measure found it */
        v3_copy(dst + offset, r, &f);
        records[i].timestamp_ns = f.timestamp_ns;
        records[i].offset = (uint64_t)offset;
        records[i].length = v3_bytes(&f);
        records[i].orig_len = f.length;
        offset += records[i].length;
        position += f.next;
    }
}

#endif
