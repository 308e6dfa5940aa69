/*
 * libFuzzer harness of the compiled per-packet path's pure C core
 * (bridge/engine/_lanes_core.h): frame decoding, the lane table, the in-order
 * check and TLS record boundaries, exactly the code the CPython binding runs.
 *
 * Input: a sequence of frames, each [linktype selector: 1 byte][length: 2 bytes
 * big-endian][bytes].  Lanes are opened for the addresses and ports of the first
 * frames that decode (with the record boundary state taken from the input), and
 * every frame goes through decode_frame + lanes_find + lane_segment; lanes are
 * closed and reopened as the binding does.  Invariants are checked with abort():
 * a boundary within the payload, the table's count, lookups after removal; and
 * the steady state's framing (application_record, lane_record_is) of each
 * payload: a whole record within the bytes, or a verdict.
 *
 * The same frames also go to the connection front (bridge/engine/_front_core.h;
 * the entries it ends to a small recently-closed set, which wraps)
 * as the binding sends them (frames no lane took), with limits taken from the
 * input: entries made, stored, promoted, owned and disowned, ended to make room,
 * expired; checked: the limits, the byte count against the entries, the stored
 * frames read back, every entry found, and nothing left once all are ended.
 *
 * Build and run (tests/test_native.py does):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *         -I bridge/engine fuzz/fuzz_lanes.c -o build/fuzz_lanes
 *   build/fuzz_lanes -runs=200000 CORPUS_DIR
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_front_core.h"
#include "_lanes_core.h"
#include "check.h"

static const int LINKTYPES[] = {LT_ETHERNET, LT_RAW, LT_LINUX_SLL, LT_IPV4, LT_IPV6, LT_LINUX_SLL2, 0, 9999};

/* The front's invariants: its byte count is its pending entries', each entry's frames read back. */
static void check_front(const Front *f, size_t max_pending, size_t max_bytes)
{
    size_t pending = 0, bytes = 0;
    for (const FrontEntry *e = f->oldest; e != NULL; e = e->next) {
        CHECK(e->state == FRONT_PENDING && e->nframes >= 1 && e->nframes <= FRONT_MAX_FRAMES);
        CHECK(e->stored <= FRONT_MAX_STORED);
        CHECK(keys_find(&f->keys, &e->key) == &e->key);
        size_t total = 0;
        for (int i = 0; i < e->nframes; i++) {
            int linktype;
            size_t length;
            int64_t ts;
            const uint8_t *p = front_frame(e, i, &linktype, &length, &ts);
            CHECK(p >= e->frames && p + length <= e->frames + e->stored);
            total += FRONT_FRAME_HEADER + length;
        }
        CHECK(total == e->stored);
        CHECK(e->next == NULL || e->next->prev == e);
        pending++;
        bytes += FRONT_ENTRY_BYTES(e);
    }
    CHECK(pending == f->pending && bytes == f->bytes);
    CHECK(pending <= max_pending && bytes <= max_bytes);
}

/* The recently closed connections (a small set: it wraps often). */
static ClosedSet closed;

/* A pending entry ends: remembered as recently closed (as the binding's front_end does), gone. */
static void front_fuzz_end(Front *f, FrontEntry *e)
{
    LaneKey key = e->key;
    front_unlink(f, e);
    front_release(e);
    if (closed_add(&closed, &key) == 0)
        CHECK(closed_has(&closed, &key));
    CHECK(closed.keys.count <= closed.keys.capacity);
}

/* One frame at the front, as the binding's front_step does it. */
static void front_fuzz_step(Front *f, const Segment *s, int linktype, const uint8_t *frame, size_t length, int64_t ts,
                            size_t max_pending, size_t max_bytes, uint8_t control)
{
    for (int rounds = 0; rounds < 64; rounds++) {
        FrontEntry *e;
        int created, full;
        int verdict = front_segment(f, s, linktype, frame, length, ts, max_pending, max_bytes, &e, &created, &full);
        CHECK(verdict == FRONT_PASS || verdict == FRONT_TAKEN || verdict == FRONT_PROMOTE);
        if (full) {
            CHECK(verdict == FRONT_PASS && !created);
            FrontEntry *old = f->oldest;
            if (old != NULL && old == e)
                old = old->next;
            if (old != NULL && !(control & 0x40)) {
                front_fuzz_end(f, old);
                continue;
            }
            if (e == NULL)
                return;
            verdict = FRONT_PROMOTE;
        }
        if (verdict == FRONT_PROMOTE) {
            CHECK(e != NULL && e->state == FRONT_PENDING);
            front_promoted(f, e);
            if (control & 0x20) /* Python ends it at once */
                front_disown(f, &e->key);
        }
        return;
    }
    CHECK(0); /* room is always made in a few rounds */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    LaneTable table;
    if (lanes_init(&table, 4) < 0)
        return 0;
    Front front;
    if (front_init(&front, 8) < 0) {
        lanes_free(&table, NULL);
        return 0;
    }
    if (closed_init(&closed, size > 2 ? data[2] % 4 : 3) < 0) {
        front_free(&front);
        lanes_free(&table, NULL);
        return 0;
    }
    size_t max_pending = size ? data[0] % 6 : 3, max_bytes = size > 1 ? (size_t)data[1] * 24 : 4096;
    int64_t clock = 0;
    size_t pos = 0;
    int opened = 0;
    while (pos + 3 <= size) {
        int linktype = LINKTYPES[data[pos] % (sizeof LINKTYPES / sizeof LINKTYPES[0])];
        uint8_t control = data[pos];
        size_t length = ((size_t)data[pos + 1] << 8) | data[pos + 2];
        pos += 3;
        if (length > size - pos)
            length = size - pos;
        /* a copy of exactly the frame's bytes: any read beyond is an ASan error */
        uint8_t *frame = malloc(length ? length : 1);
        if (frame == NULL)
            break;
        memcpy(frame, data + pos, length);
        pos += length;
        Segment s;
        if (decode_frame(linktype, frame, length, &s) == 0) {
            CHECK(s.payload >= frame && s.payload + s.payload_len <= frame + length);
            /* the TCP header the binding reads (make_segment: ack, window, the NS bit) */
            CHECK(s.tcp >= frame && s.tcp + 20 <= s.payload && s.tagged <= 1);
            Lane *lane = lanes_find(&table, &s.key);
            if (lane == NULL && opened < 16) {
                Lane *fresh = NULL;
                int rc = lanes_insert(&table, &s.key, &fresh);
                if (rc == LANES_OK) {
                    opened++;
                    fresh->next_seq = s.seq;
                    fresh->header_len = (uint8_t)(control % 5);
                    memcpy(fresh->header, "\x17\x03\x03\x40\x00", fresh->header_len);
                    fresh->remaining = fresh->header_len ? 0 : (uint32_t)(control * 97u) % 20000u;
                    lane = fresh;
                } else {
                    CHECK(rc == LANES_FULL);
                    CHECK(table.count == table.capacity);
                }
            }
            if (lane == NULL) {
                clock += (control & 0x0F) * 30000000LL;
                front_fuzz_step(&front, &s, linktype, frame, length, clock, max_pending, max_bytes, control);
                check_front(&front, max_pending, max_bytes);
                if ((control & 0x30) == 0x30) { /* expiry */
                    while (front.oldest != NULL && front.oldest->lru_ns < clock - 100000000LL) {
                        front_fuzz_end(&front, front.oldest);
                    }
                }
            }
            if (lane != NULL) {
                long boundary;
                int verdict = lane_segment(&table, lane, &s, 1, &boundary);
                CHECK(verdict == LANE_TAKEN || verdict == LANE_REFUSED);
                CHECK(boundary >= -1 && boundary <= (long)s.payload_len);
                /* the steady state's framing of the same bytes: a whole record within them, or a verdict */
                size_t size = application_record(s.payload, s.payload_len);
                CHECK(size == RECORD_INCOMPLETE || size == RECORD_OTHER ||
                      (size >= 5 && size <= s.payload_len && size <= 5 + MAX_FRAGMENT));
                size_t held = s.payload_len < (size_t)(control % 64) ? s.payload_len : (size_t)(control % 64);
                CHECK(lane_record_is(lane, s.payload, 0) == lane_at_boundary(lane));
                if (lane_record_is(lane, s.payload, held))
                    CHECK(held == 0 || application_record(s.payload, held) == RECORD_INCOMPLETE);
                if (verdict == LANE_REFUSED || (control & 0x80)) {
                    LaneKey key = lane->key;
                    CHECK(lanes_remove(&table, &key, NULL) == 0);
                    CHECK(lanes_find(&table, &key) == NULL);
                }
            }
        }
        free(frame);
    }
    /* every lane still open is found, then removed */
    size_t count = table.count;
    for (size_t i = 0; i < table.nslots; i++) {
        Lane *lane = table.slots[i];
        if (lane != NULL)
            CHECK(lanes_find(&table, &lane->key) == lane);
    }
    while (table.count) {
        for (size_t i = 0; i < table.nslots; i++) {
            if (table.slots[i] != NULL) {
                LaneKey key = table.slots[i]->key;
                CHECK(lanes_remove(&table, &key, NULL) == 0);
                break;
            }
        }
        CHECK(table.count < count--);
    }
    CHECK(table.ntouched == 0);
    lanes_free(&table, NULL);
    /* every pending entry ends; owned marks are freed with the table */
    while (front.oldest != NULL)
        front_fuzz_end(&front, front.oldest);
    CHECK(front.pending == 0 && front.bytes == 0);
    front_free(&front);
    closed_free(&closed);
    return 0;
}
