/*
 * The pure C part of the connection front (bridge.engine._lanes, see
 * bridge/engine/lanes.py): connections whose server has not answered yet are
 * kept here, as a few hundred bytes each, instead of as Python flows.
 *
 * A pure SYN of a connection Python does not track opens a *pending* entry; the
 * client's next frames (its SYN again, pure ACKs, its first bytes in order: the
 * ClientHello) are stored in it as they came.  The first frame of anything
 * else (a frame of the server, a FIN or RST, a byte out of order, more than the
 * entry may hold) *promotes* the entry: Python's decryptor gets its stored
 * frames first, then that frame, exactly as if it had seen them all, and the
 * entry becomes *owned*: a mark that Python tracks the connection, so that the
 * front leaves all its frames to Python.  Entries that never get there (a
 * flood: SYN and ClientHello, never answered) are ended by the decryptor
 * (evicted, idle, end of input) without a Python flow ever being made.
 *
 * What the client sent is classified for the decryptor's flow log: nothing,
 * one whole ClientHello in one segment that the Python parser accepts (the same
 * checks, bridge/tls/handshake.py parse_client_hello), or anything else.
 *
 * Bounded: at most `max_pending` pending entries and `max_bytes` bytes of them
 * (the caller's share of the memory budget, less what the table's slots may grow
 * by: keys_slot_bytes), at most FRONT_MAX_FRAMES frames and
 * FRONT_MAX_STORED bytes of frames each; beyond, the least recently active
 * pending entry is ended (handed to the caller) to make room.
 *
 * Included by _lanes.c (the CPython binding) and by fuzz/fuzz_lanes.c.
 */
#ifndef BRIDGE_FRONT_CORE_H
#define BRIDGE_FRONT_CORE_H

#include "_lanes_core.h"

#define TCP_ACK 0x10

enum { FRONT_OWNED = 0, FRONT_PENDING = 1 };
/* what the client sent, so far */
enum { SENT_NOTHING = 0, SENT_HELLO = 1, SENT_OTHER = 2 };
/* front_segment's verdicts */
enum { FRONT_PASS = 0, FRONT_TAKEN = 1, FRONT_PROMOTE = 2 };

#define FRONT_MAX_FRAMES 6
#define FRONT_MAX_STORED 4096
/* a stored frame: linktype (2 bytes), length (2), timestamp in ns (8), big-endian, then its bytes */
#define FRONT_FRAME_HEADER 12
/* the activity order is kept to within this (as the Python path keeps it) */
#define FRONT_LRU_GRANULARITY_NS 100000000LL
/* TLS: the longest record (bridge/tls/records.py MAX_RECORD_LENGTH) */
#define FRONT_MAX_RECORD (16384 + 2048)

typedef struct FrontEntry {
    LaneKey key; /* client → server; first member (a KeyTable entry) */
    uint8_t state;
    uint8_t nframes;
    uint8_t sent;
    uint8_t why; /* set by the caller when it ends the entry */
    uint32_t isn, next_seq;
    uint32_t stored; /* bytes of frames */
    int64_t first_ns, last_ns, lru_ns;
    uint64_t flow_id;
    struct FrontEntry *prev, *next; /* pending entries, least recently active first */
    uint8_t *frames;
} FrontEntry;

/* What a pending entry is charged: the entry, its frames and their allocations (the
   table's slots are counted apart: keys_slot_bytes). */
#define FRONT_ENTRY_BYTES(e) (sizeof(FrontEntry) + 48 + (e)->stored)

typedef struct {
    KeyTable keys;
    FrontEntry *oldest, *newest;
    size_t pending;
    size_t bytes; /* charged for the pending entries */
    uint64_t next_id;
} Front;

static int front_init(Front *f, size_t capacity)
{
    memset(f, 0, sizeof *f);
    f->next_id = 1;
    return keys_init(&f->keys, capacity);
}

static void front_free_entry(LaneKey *key)
{
    free(((FrontEntry *)(void *)key)->frames);
}

static void front_free(Front *f)
{
    keys_free(&f->keys, front_free_entry);
    memset(f, 0, sizeof *f);
}

static void front_lru_unlink(Front *f, FrontEntry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        f->oldest = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        f->newest = e->prev;
    e->prev = e->next = NULL;
}

static void front_lru_append(Front *f, FrontEntry *e)
{
    e->prev = f->newest;
    e->next = NULL;
    if (f->newest)
        f->newest->next = e;
    else
        f->oldest = e;
    f->newest = e;
}

static inline void reverse_key(LaneKey *out, const LaneKey *key)
{
    out->bytes[0] = key->bytes[0];
    memcpy(out->bytes + 1, key->bytes + 17, 16);
    memcpy(out->bytes + 17, key->bytes + 1, 16);
    memcpy(out->bytes + 33, key->bytes + 35, 2);
    memcpy(out->bytes + 35, key->bytes + 33, 2);
}

/* --- the ClientHello check: parse_client_hello's length checks, nothing kept --- */

static int check_list(const uint8_t *d, size_t at, size_t end, int entry_length_size, size_t entry_offset)
{
    if (at + 2 > end)
        return -1;
    size_t stop = at + 2 + rd16(d + at);
    if (stop > end)
        return -1;
    size_t pos = at + 2;
    while (pos < stop) {
        pos += entry_offset;
        if (pos + (size_t)entry_length_size > stop)
            return -1;
        size_t length = entry_length_size == 1 ? d[pos] : rd16(d + pos);
        pos += (size_t)entry_length_size + length;
        if (pos > stop)
            return -1;
    }
    return 0;
}

/* The bytes are one TLS handshake record holding exactly one ClientHello that
   bridge/tls/connection.py _whole_client_hello takes: 1, else 0. */
static int whole_client_hello(const uint8_t *p, size_t size)
{
    if (size < 9 || p[0] != 22 || p[1] != 3 || p[5] != 1)
        return 0;
    size_t length = rd16(p + 3);
    if (length + 5 != size || length > FRONT_MAX_RECORD ||
        (((size_t)p[6] << 16) | ((size_t)p[7] << 8) | p[8]) + 4 != length)
        return 0;
    const uint8_t *d = p + 5; /* the handshake message; its body at 4 */
    size_t end = length, offset = 4;
    if (end - offset < 35)
        return 0;
    size_t sid_end = offset + 35 + d[offset + 34];
    if (sid_end + 2 > end)
        return 0;
    size_t suites_end = sid_end + 2 + rd16(d + sid_end);
    if (suites_end + 1 > end)
        return 0;
    size_t pos = suites_end + 1 + d[suites_end];
    if (pos > end)
        return 0;
    if (pos < end) {
        if (pos + 2 > end)
            return 0;
        size_t ext_end = pos + 2 + rd16(d + pos);
        if (ext_end > end)
            return 0;
        pos += 2;
        while (pos < ext_end) {
            if (pos + 4 > ext_end)
                return 0;
            unsigned type = rd16(d + pos);
            size_t at = pos + 4;
            pos = at + rd16(d + pos + 2);
            if (pos > ext_end)
                return 0;
            if (type == 0 && check_list(d, at, pos, 2, 1) < 0) /* server_name */
                return 0;
            if (type == 16 && check_list(d, at, pos, 1, 0) < 0) /* ALPN */
                return 0;
            if (type == 43 && (at >= pos || at + 1 + d[at] > pos)) /* supported_versions */
                return 0;
        }
    }
    return 1;
}

/* --- entries --- */

static int front_store(FrontEntry *e, int linktype, const uint8_t *frame, size_t length, int64_t ts)
{
    if (e->nframes >= FRONT_MAX_FRAMES || length > 0xFFFF || e->stored + FRONT_FRAME_HEADER + length > FRONT_MAX_STORED)
        return -1;
    uint8_t *frames = realloc(e->frames, e->stored + FRONT_FRAME_HEADER + length);
    if (frames == NULL)
        return -1;
    uint8_t *at = frames + e->stored;
    at[0] = (uint8_t)(linktype >> 8);
    at[1] = (uint8_t)linktype;
    at[2] = (uint8_t)(length >> 8);
    at[3] = (uint8_t)length;
    uint64_t t = (uint64_t)ts;
    for (int i = 0; i < 8; i++)
        at[4 + i] = (uint8_t)(t >> (56 - 8 * i));
    memcpy(at + FRONT_FRAME_HEADER, frame, length);
    e->frames = frames;
    e->stored += (uint32_t)(FRONT_FRAME_HEADER + length);
    e->nframes++;
    return 0;
}

/* The i-th stored frame of e: its bytes (and *linktype, *length, *ts). */
static const uint8_t *front_frame(const FrontEntry *e, int i, int *linktype, size_t *length, int64_t *ts)
{
    const uint8_t *at = e->frames;
    for (;;) {
        size_t n = rd16(at + 2);
        if (i-- == 0) {
            *linktype = rd16(at);
            *length = n;
            uint64_t t = 0;
            for (int b = 0; b < 8; b++)
                t = (t << 8) | at[4 + b];
            *ts = (int64_t)t;
            return at + FRONT_FRAME_HEADER;
        }
        at += FRONT_FRAME_HEADER + n;
    }
}

static void front_activity(Front *f, FrontEntry *e, int64_t ts)
{
    e->last_ns = ts;
    if (ts - e->lru_ns > FRONT_LRU_GRANULARITY_NS) {
        e->lru_ns = ts;
        front_lru_unlink(f, e);
        front_lru_append(f, e);
    }
}

/* Unlink a pending entry from the table and the activity order; the caller frees it (front_release). */
static void front_unlink(Front *f, FrontEntry *e)
{
    front_lru_unlink(f, e);
    f->pending--;
    f->bytes -= FRONT_ENTRY_BYTES(e);
    keys_unlink(&f->keys, &e->key);
}

static void front_release(FrontEntry *e)
{
    free(e->frames);
    free(e);
}

/* Python tracks this connection (client → server key): its frames are left to Python. 0, or -1 if full. */
static int front_own(Front *f, const LaneKey *key)
{
    LaneKey *found = keys_find(&f->keys, key);
    if (found != NULL)
        return ((FrontEntry *)(void *)found)->state == FRONT_OWNED ? 0 : -1;
    LaneKey *entry = NULL;
    int rc = keys_insert(&f->keys, key, sizeof(FrontEntry), &entry);
    return rc == LANES_OK ? 0 : -1;
}

/* Python no longer tracks it. */
static void front_disown(Front *f, const LaneKey *key)
{
    LaneKey *found = keys_find(&f->keys, key);
    if (found != NULL && ((FrontEntry *)(void *)found)->state == FRONT_OWNED)
        front_release((FrontEntry *)(void *)keys_unlink(&f->keys, key));
}

/* A promoted entry: Python takes the connection; the entry stays as the owned mark. */
static void front_promoted(Front *f, FrontEntry *e)
{
    front_lru_unlink(f, e);
    f->pending--;
    f->bytes -= FRONT_ENTRY_BYTES(e);
    free(e->frames);
    e->frames = NULL;
    e->stored = 0;
    e->nframes = 0;
    e->state = FRONT_OWNED;
}

/*
 * A decoded segment that no lane took.  FRONT_PASS: Python's path takes it;
 * FRONT_TAKEN: stored in *entry (a new pending entry when *created); FRONT_PROMOTE:
 * *entry must go to Python, before this frame, which Python then takes.
 * Room: when `pending` or `bytes` would pass max_pending or max_bytes (a new
 * entry, or a frame stored in *entry), *full is set (1: max_pending, 2: max_bytes),
 * nothing changed and FRONT_PASS returned: the caller makes room (an entry other
 * than *entry ends) and asks again, or gives the frame to Python (promoting
 * *entry, if any).
 */
static int front_segment(Front *f, const Segment *s, int linktype, const uint8_t *frame, size_t length, int64_t ts,
                         size_t max_pending, size_t max_bytes, FrontEntry **entry, int *created, int *full)
{
    *entry = NULL;
    *created = *full = 0;
    FrontEntry *e = (FrontEntry *)(void *)keys_find(&f->keys, &s->key);
    if (e != NULL) { /* the client's frame */
        if (e->state == FRONT_OWNED)
            return FRONT_PASS;
        *entry = e;
        uint8_t control = s->flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK);
        int fits = 0;
        if (control == TCP_SYN)
            fits = s->payload_len == 0 && s->seq == e->isn; /* the SYN again */
        else if (control == TCP_ACK)
            fits = s->payload_len == 0 || s->seq == e->next_seq;
        if (!fits)
            return FRONT_PROMOTE;
        if (f->bytes + FRONT_FRAME_HEADER + length > max_bytes) {
            *full = 2; /* room first (from another entry), or Python decides */
            return FRONT_PASS;
        }
        size_t before = FRONT_ENTRY_BYTES(e);
        if (front_store(e, linktype, frame, length, ts) < 0)
            return FRONT_PROMOTE;
        f->bytes += FRONT_ENTRY_BYTES(e) - before;
        if (s->payload_len) {
            e->sent = e->sent == SENT_NOTHING && whole_client_hello(s->payload, s->payload_len) ? SENT_HELLO
                                                                                             : SENT_OTHER;
            e->next_seq += (uint32_t)s->payload_len;
        }
        front_activity(f, e, ts);
        return FRONT_TAKEN;
    }
    LaneKey reversed;
    reverse_key(&reversed, &s->key);
    e = (FrontEntry *)(void *)keys_find(&f->keys, &reversed);
    if (e != NULL) { /* the server's frame */
        if (e->state == FRONT_OWNED)
            return FRONT_PASS;
        *entry = e;
        return FRONT_PROMOTE;
    }
    if ((s->flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK)) != TCP_SYN || s->payload_len || length > 0xFFFF ||
        max_pending == 0)
        return FRONT_PASS;
    size_t need = sizeof(FrontEntry) + 48 + FRONT_FRAME_HEADER + length;
    if (f->pending + 1 > max_pending || f->keys.count >= f->keys.capacity) {
        *full = 1;
        return FRONT_PASS;
    }
    if (f->bytes + need > max_bytes) {
        *full = 2;
        return FRONT_PASS;
    }
    LaneKey *fresh = NULL;
    if (keys_insert(&f->keys, &s->key, sizeof(FrontEntry), &fresh) != LANES_OK)
        return FRONT_PASS;
    e = (FrontEntry *)(void *)fresh;
    e->state = FRONT_PENDING;
    e->isn = s->seq;
    e->next_seq = s->seq + 1;
    e->first_ns = e->last_ns = e->lru_ns = ts;
    if (front_store(e, linktype, frame, length, ts) < 0) {
        front_release((FrontEntry *)(void *)keys_unlink(&f->keys, &e->key));
        return FRONT_PASS;
    }
    e->flow_id = f->next_id++;
    front_lru_append(f, e);
    f->pending++;
    f->bytes += FRONT_ENTRY_BYTES(e);
    *entry = e;
    *created = 1;
    return FRONT_TAKEN;
}

#endif
