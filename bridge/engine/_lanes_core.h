/*
 * The pure C part of bridge.engine._lanes (no Python): frame decoding on the
 * common path, the lane table, and one lane's in-order check.  Included by _lanes.c (the CPython binding) and by the fuzz
 * harness (fuzz/fuzz_lanes.c), so the fuzzer and AddressSanitizer exercise
 * exactly this code.
 */
#ifndef BRIDGE_LANES_CORE_H
#define BRIDGE_LANES_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04

/* version (4/6), source address, destination address (IPv4 zero-padded), ports */
typedef struct {
    uint8_t bytes[1 + 16 + 16 + 2 + 2];
} LaneKey;

typedef struct {
    LaneKey key;
    uint32_t seq;
    uint8_t flags;
    uint8_t tagged; /* the frame had VLAN tags (skipped) */
    const uint8_t *tcp; /* the TCP header (20 bytes at least, within the frame) */
    const uint8_t *payload;
    size_t payload_len;
} Segment;

typedef struct {
    LaneKey key;
    void *handle; /* the binding's PyObject*, opaque here */
    uint32_t next_seq;
    /* position + 1 in the table's touched list; 0: not touched since the last take */
    size_t touched;
    uint64_t packets, segments, bytes;
    int64_t last_ns;
    /* TLS record boundaries: the current record's header bytes while fewer than
       5 are known, else the bytes still to come until it ends */
    uint8_t header[5];
    uint8_t header_len;
    uint32_t remaining;
    /* the steady state: the binding's record opener (a PyObject*, opaque here), or
       NULL; with one, the lane gathers its records itself (held: the bytes of the
       record not yet complete; the binding allocates it) */
    void *opener;
    uint8_t *held;
    size_t held_len, held_cap;
    /* the bytes at the end of each opener's result that are not plaintext (TLS 1.3: the inner content type) */
    uint8_t trailer;
} Lane;

/* The table of lanes (a KeyTable of Lane, see below) and the lanes touched since the last take. */
typedef struct KeyTable {
    LaneKey **slots; /* each entry's first member is its key */
    size_t nslots;   /* power of two, at least twice the count (keys_insert grows it) */
    size_t capacity, count;
    uint64_t seed;
} KeyTable;

typedef struct {
    Lane **slots; /* the KeyTable's slots, typed (as they grow too) */
    size_t nslots;
    size_t capacity, count;
    uint64_t seed;
    Lane **touched; /* lanes that had frames since the last take, at most capacity */
    size_t ntouched;
} LaneTable;

enum { LANES_OK = 0, LANES_EXISTS = 1, LANES_FULL = 2, LANES_NOMEM = -1 };
/* lane_segment's verdicts */
enum { LANE_TAKEN = 0, LANE_REFUSED = 1 };

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void lane_key(LaneKey *key, const uint8_t *src, const uint8_t *dst, int addr_len, uint16_t sport,
                            uint16_t dport)
{
    memset(key, 0, sizeof *key);
    key->bytes[0] = addr_len == 4 ? 4 : 6;
    memcpy(key->bytes + 1, src, (size_t)addr_len);
    memcpy(key->bytes + 17, dst, (size_t)addr_len);
    key->bytes[33] = (uint8_t)(sport >> 8);
    key->bytes[34] = (uint8_t)sport;
    key->bytes[35] = (uint8_t)(dport >> 8);
    key->bytes[36] = (uint8_t)dport;
}

/* ------------------------------------------------------------------------- */
/* Frame decoding, common path only: 0 = a TCP segment in s, -1 = Python's path */

#define LT_ETHERNET 1
#define LT_RAW 101
#define LT_LINUX_SLL 113
#define LT_IPV4 228
#define LT_IPV6 229
#define LT_LINUX_SLL2 276

static inline int is_vlan_tpid(unsigned etype)
{
    return etype == 0x8100 || etype == 0x88A8 || etype == 0x9100;
}

static int decode_frame(int linktype, const uint8_t *d, size_t n, Segment *s)
{
    size_t off;
    unsigned etype;
    switch (linktype) {
    case LT_ETHERNET:
        if (n < 14)
            return -1;
        etype = rd16(d + 12);
        off = 14;
        break;
    case LT_LINUX_SLL:
        if (n < 16)
            return -1;
        etype = rd16(d + 14);
        off = 16;
        break;
    case LT_LINUX_SLL2:
        if (n < 20)
            return -1;
        etype = rd16(d);
        off = 20;
        break;
    case LT_RAW:
    case LT_IPV4:
    case LT_IPV6:
        if (n < 1)
            return -1;
        off = 0;
        if (linktype == LT_IPV4 || (linktype == LT_RAW && d[0] >> 4 == 4))
            etype = 0x0800;
        else if (linktype == LT_IPV6 || d[0] >> 4 == 6)
            etype = 0x86DD;
        else
            return -1;
        break;
    default:
        return -1;
    }
    s->tagged = 0;
    if (linktype != LT_RAW && linktype != LT_IPV4 && linktype != LT_IPV6) {
        while (is_vlan_tpid(etype)) {
            s->tagged = 1;
            if (off + 4 > n)
                return -1;
            etype = rd16(d + off + 2);
            off += 4;
        }
    }
    size_t tcp, end;
    if (etype == 0x0800) {
        if (n - off < 20)
            return -1;
        const uint8_t *ip = d + off;
        if (ip[0] >> 4 != 4)
            return -1;
        size_t ihl = (size_t)(ip[0] & 0x0F) << 2;
        if (ihl < 20 || off + ihl > n)
            return -1;
        size_t total = rd16(ip + 2);
        if (total == 0) {
            end = n;
        } else {
            if (total < ihl)
                return -1;
            end = off + total > n ? n : off + total;
        }
        if (ip[9] != 6 || (rd16(ip + 6) & 0x3FFF))
            return -1;
        lane_key(&s->key, ip + 12, ip + 16, 4, 0, 0);
        tcp = off + ihl;
    } else if (etype == 0x86DD) {
        if (n - off < 40)
            return -1;
        const uint8_t *ip = d + off;
        if (ip[0] >> 4 != 6 || ip[6] != 6)
            return -1; /* extension headers: Python's path */
        size_t plen = rd16(ip + 4);
        tcp = off + 40;
        end = plen == 0 ? n : (tcp + plen > n ? n : tcp + plen);
        lane_key(&s->key, ip + 8, ip + 24, 16, 0, 0);
    } else {
        return -1;
    }
    if (end < tcp || end - tcp < 20)
        return -1;
    const uint8_t *t = d + tcp;
    size_t hlen = (size_t)(t[12] >> 4) << 2;
    if (hlen < 20 || tcp + hlen > end)
        return -1;
    s->key.bytes[33] = t[0];
    s->key.bytes[34] = t[1];
    s->key.bytes[35] = t[2];
    s->key.bytes[36] = t[3];
    s->seq = rd32(t + 4);
    s->flags = t[13];
    s->tcp = t;
    s->payload = d + tcp + hlen;
    s->payload_len = end - tcp - hlen;
    return 0;
}

/* ------------------------------------------------------------------------- */
/* The lane table: open addressing, linear probing, backward-shift deletion,
   a random seed so that colliding keys cannot be chosen in advance. */

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static inline size_t key_hash(const KeyTable *t, const LaneKey *key)
{
    uint64_t h = t->seed;
    uint64_t w;
    for (size_t i = 0; i + 8 <= sizeof key->bytes; i += 8) {
        memcpy(&w, key->bytes + i, 8);
        h = mix64(h ^ w);
    }
    w = 0;
    memcpy(&w, key->bytes + 32, sizeof key->bytes - 32);
    h = mix64(h ^ w);
    return (size_t)h & (t->nslots - 1);
}

/* The slots grow with the entries (twice as many slots as entries at most, at
   least 16), so that the table's memory follows its use, up to `capacity` entries. */
static int keys_init(KeyTable *t, size_t capacity)
{
    size_t nslots = 16;
    memset(t, 0, sizeof *t);
    t->slots = calloc(nslots, sizeof(LaneKey *));
    if (t->slots == NULL)
        return -1;
    t->nslots = nslots;
    t->capacity = capacity;
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
        seed = (uint64_t)(uintptr_t)t ^ 0x9e3779b97f4a7c15ULL;
    t->seed = seed;
    return 0;
}

/* Free every entry (release: called on each first) and the slots. */
static void keys_free(KeyTable *t, void (*release)(LaneKey *))
{
    if (t->slots == NULL)
        return;
    for (size_t i = 0; i < t->nslots; i++) {
        LaneKey *entry = t->slots[i];
        if (entry) {
            if (release)
                release(entry);
            free(entry);
        }
    }
    free(t->slots);
    memset(t, 0, sizeof *t);
}

static size_t keys_slot(const KeyTable *t, const LaneKey *key)
{
    size_t mask = t->nslots - 1;
    size_t i = key_hash(t, key);
    while (t->slots[i] && memcmp(t->slots[i]->bytes, key->bytes, sizeof key->bytes) != 0)
        i = (i + 1) & mask;
    return i;
}

static inline LaneKey *keys_find(const KeyTable *t, const LaneKey *key)
{
    return t->slots[keys_slot(t, key)];
}

/* Twice the slots, every entry placed anew. */
static int keys_grow(KeyTable *t)
{
    size_t nslots = t->nslots * 2;
    LaneKey **slots = calloc(nslots, sizeof(LaneKey *));
    if (slots == NULL)
        return -1;
    LaneKey **old = t->slots;
    size_t count = t->nslots;
    t->slots = slots;
    t->nslots = nslots;
    for (size_t i = 0; i < count; i++) {
        if (old[i] == NULL)
            continue;
        size_t j = key_hash(t, old[i]);
        while (slots[j])
            j = (j + 1) & (nslots - 1);
        slots[j] = old[i];
    }
    free(old);
    return 0;
}

/* Whether one more entry makes the slots grow (by keys_slot_bytes(t) bytes). */
static inline int keys_will_grow(const KeyTable *t)
{
    return 2 * (t->count + 1) > t->nslots;
}

static inline size_t keys_slot_bytes(const KeyTable *t)
{
    return t->nslots * sizeof(LaneKey *);
}

/* Insert an entry of size bytes (zeroed, its key set): LANES_OK (*out), _EXISTS, _FULL or _NOMEM. */
static int keys_insert(KeyTable *t, const LaneKey *key, size_t size, LaneKey **out)
{
    size_t i = keys_slot(t, key);
    if (t->slots[i])
        return LANES_EXISTS;
    if (t->count >= t->capacity)
        return LANES_FULL;
    if (keys_will_grow(t)) {
        if (keys_grow(t) < 0)
            return LANES_NOMEM;
        i = keys_slot(t, key);
    }
    LaneKey *entry = calloc(1, size);
    if (entry == NULL)
        return LANES_NOMEM;
    *entry = *key;
    t->slots[i] = entry;
    t->count++;
    *out = entry;
    return LANES_OK;
}

/* Unlink the entry of key from the table, not freed: it, or NULL if absent. */
static LaneKey *keys_unlink(KeyTable *t, const LaneKey *key)
{
    size_t mask = t->nslots - 1;
    size_t hole = keys_slot(t, key);
    LaneKey *entry = t->slots[hole];
    if (entry == NULL)
        return NULL;
    t->slots[hole] = NULL;
    t->count--;
    /* backward shift: move later entries of the probe run into the hole */
    for (size_t j = (hole + 1) & mask; t->slots[j]; j = (j + 1) & mask) {
        size_t home = key_hash(t, t->slots[j]);
        /* entry j may move to the hole unless its home is cyclically within (hole, j] */
        int stays = hole < j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            t->slots[hole] = t->slots[j];
            t->slots[j] = NULL;
            hole = j;
        }
    }
    return entry;
}

/* ------------------------------------------------------------------------- */
/* Recently closed connections: the last `capacity` client → server keys, first
   in first out (the decryptor's ``recently_closed``: late packets of a finished
   connection start no new one).  The keys live in a ring that the table's slots
   point into: no allocation per key, the oldest overwritten once full.  A key
   remembered already keeps its place (as an ordered dict's key does). */

typedef struct {
    KeyTable keys;
    LaneKey *ring; /* capacity keys */
    size_t next;   /* where the next key goes: the oldest one, once full */
} ClosedSet;

static int closed_init(ClosedSet *c, size_t capacity)
{
    memset(c, 0, sizeof *c);
    if (keys_init(&c->keys, capacity) < 0)
        return -1;
    if (capacity && (c->ring = calloc(capacity, sizeof(LaneKey))) == NULL) {
        free(c->keys.slots);
        memset(c, 0, sizeof *c);
        return -1;
    }
    return 0;
}

static void closed_free(ClosedSet *c)
{
    free(c->keys.slots); /* the entries are the ring's */
    free(c->ring);
    memset(c, 0, sizeof *c);
}

/* Remember key: 0, or -1 if out of memory (nothing changed). */
static int closed_add(ClosedSet *c, const LaneKey *key)
{
    KeyTable *t = &c->keys;
    if (t->capacity == 0 || t->slots[keys_slot(t, key)] != NULL)
        return 0;
    LaneKey *slot = &c->ring[c->next];
    if (t->count == t->capacity)
        keys_unlink(t, slot); /* the oldest goes */
    else if (keys_will_grow(t) && keys_grow(t) < 0)
        return -1;
    *slot = *key;
    t->slots[keys_slot(t, key)] = slot;
    t->count++;
    c->next = c->next + 1 == t->capacity ? 0 : c->next + 1;
    return 0;
}

static inline int closed_has(const ClosedSet *c, const LaneKey *key)
{
    return c->keys.capacity != 0 && keys_find(&c->keys, key) != NULL;
}

/* The lane table over a KeyTable: the same memory, the slots typed as Lane. */
_Static_assert(offsetof(Lane, key) == 0, "a lane starts with its key");
#define KEYS(t) ((KeyTable *)(void *)(t))
_Static_assert(offsetof(LaneTable, slots) == offsetof(KeyTable, slots) &&
                   offsetof(LaneTable, nslots) == offsetof(KeyTable, nslots) &&
                   offsetof(LaneTable, capacity) == offsetof(KeyTable, capacity) &&
                   offsetof(LaneTable, count) == offsetof(KeyTable, count) &&
                   offsetof(LaneTable, seed) == offsetof(KeyTable, seed),
               "a LaneTable begins as a KeyTable");

static int lanes_init(LaneTable *t, size_t capacity)
{
    memset(t, 0, sizeof *t);
    if (keys_init(KEYS(t), capacity) < 0)
        return -1;
    t->touched = calloc(capacity, sizeof(Lane *));
    if (t->touched == NULL) {
        keys_free(KEYS(t), NULL);
        return -1;
    }
    return 0;
}

/* Free every lane (release: called on each first, with the lane's key: the lane). */
static void lanes_free(LaneTable *t, void (*release)(LaneKey *))
{
    if (t->slots == NULL)
        return;
    keys_free(KEYS(t), release);
    free(t->touched);
    memset(t, 0, sizeof *t);
}

static Lane *lanes_find(const LaneTable *t, const LaneKey *key)
{
    return (Lane *)(void *)keys_find(KEYS(t), key);
}

static int lanes_insert(LaneTable *t, const LaneKey *key, Lane **out)
{
    LaneKey *entry = NULL;
    int rc = keys_insert(KEYS(t), key, sizeof(Lane), &entry);
    if (rc == LANES_OK)
        *out = (Lane *)(void *)entry;
    return rc;
}

/* The lane had a frame: remember it for the next take (once). */
static inline void lane_touch(LaneTable *t, Lane *lane)
{
    if (!lane->touched && t->ntouched < t->capacity) {
        t->touched[t->ntouched++] = lane;
        lane->touched = t->ntouched;
    }
}

/* Remove the lane of key (release: called on it first); 0, or -1 if absent. */
static int lanes_remove(LaneTable *t, const LaneKey *key, void (*release)(Lane *))
{
    Lane *lane = (Lane *)(void *)keys_unlink(KEYS(t), key);
    if (lane == NULL)
        return -1;
    if (lane->touched) { /* swap-remove from the touched list */
        size_t at = lane->touched - 1;
        Lane *last = t->touched[--t->ntouched];
        t->touched[at] = last;
        last->touched = at + 1;
        lane->touched = 0;
    }
    if (release)
        release(lane);
    free(lane);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* One lane */

/*
 * Follow the TLS record boundaries through n stream bytes: returns the offset
 * just after the last record that ends within them, or -1 if none does.  Only
 * the 5-byte headers' length fields are read (a record header that is not TLS
 * makes the Python path stop the stream, which closes the lane).
 */
static long lane_boundaries(Lane *lane, const uint8_t *p, size_t n)
{
    long last = -1;
    size_t pos = 0;
    while (pos < n) {
        if (lane->remaining == 0) {
            size_t take = 5u - lane->header_len;
            if (take > n - pos)
                take = n - pos;
            memcpy(lane->header + lane->header_len, p + pos, take);
            lane->header_len = (uint8_t)(lane->header_len + take);
            pos += take;
            if (lane->header_len < 5)
                break;
            lane->header_len = 0;
            lane->remaining = rd16(lane->header + 3);
            if (lane->remaining == 0)
                last = (long)pos;
            continue;
        }
        size_t take = lane->remaining;
        if (take > n - pos)
            take = n - pos;
        pos += take;
        lane->remaining -= (uint32_t)take;
        if (lane->remaining == 0)
            last = (long)pos;
    }
    return last;
}

/* Is the lane at a record boundary (no header byte, no record byte to come)? */
static inline int lane_at_boundary(const Lane *lane)
{
    return lane->remaining == 0 && lane->header_len == 0;
}

#define CONTENT_APPLICATION_DATA 23
/* 2^14 + 2048: the most a TLS record's fragment may hold (RFC 5246 6.2.3) */
#define MAX_FRAGMENT 18432

/*
 * The steady state's framing of the n bytes at p: RECORD_INCOMPLETE while they
 * may still begin a record of application data (fewer than its whole bytes);
 * RECORD_OTHER if they begin with anything else (another content type, not
 * TLS 1.x, a length over the maximum: the Python path frames those); else the
 * size, header included, of the whole record of application data they begin with.
 */
#define RECORD_INCOMPLETE 0
#define RECORD_OTHER ((size_t)-1)
static inline size_t application_record(const uint8_t *p, size_t n)
{
    if ((n >= 1 && p[0] != CONTENT_APPLICATION_DATA) || (n >= 2 && p[1] != 3))
        return RECORD_OTHER;
    if (n < 5)
        return RECORD_INCOMPLETE;
    size_t length = rd16(p + 3);
    if (length > MAX_FRAGMENT)
        return RECORD_OTHER;
    return n - 5 < length ? RECORD_INCOMPLETE : 5 + length;
}

/*
 * Are the n bytes at p those of the record the lane is reading, from its start
 * (none at a record boundary), and the start of a record of application data?
 */
static inline int lane_record_is(const Lane *lane, const uint8_t *p, size_t n)
{
    if (n == 0)
        return lane_at_boundary(lane);
    if (application_record(p, n) != RECORD_INCOMPLETE)
        return 0;
    if (lane->remaining == 0)
        return n == lane->header_len && memcmp(p, lane->header, n) == 0;
    return n >= 5 && 5u + rd16(p + 3) - n == lane->remaining;
}

/*
 * One decoded segment of the lane.  LANE_TAKEN: consumed (its payload, if any,
 * is the next in-order bytes of the direction; *boundary is where the last
 * record ending in it ends, -1 if none); LANE_REFUSED: not consumed, nothing
 * changed: Python must take the frame (SYN, FIN, RST, or not the next sequence
 * number).
 */
static int lane_segment(LaneTable *t, Lane *lane, const Segment *s, int64_t ts, long *boundary)
{
    *boundary = -1;
    if (s->flags & (TCP_SYN | TCP_FIN | TCP_RST))
        return LANE_REFUSED;
    if (s->payload_len && s->seq != lane->next_seq)
        return LANE_REFUSED;
    lane->packets++;
    lane_touch(t, lane);
    if (ts > lane->last_ns)
        lane->last_ns = ts;
    if (s->payload_len) {
        lane->segments++;
        lane->bytes += s->payload_len;
        lane->next_seq += (uint32_t)s->payload_len;
        *boundary = lane_boundaries(lane, s->payload, s->payload_len);
    }
    return LANE_TAKEN;
}

#endif
