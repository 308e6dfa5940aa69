/*
 * bridge.engine._lanes: the compiled per-packet path of established TLS streams.
 *
 * A *lane* is one direction of one TCP connection that the decryptor
 * (bridge/engine/decryptor.py, through bridge/engine/lanes.py) has handed over
 * because nothing about it needs Python per packet: its reassembly is in order
 * with nothing buffered, its TLS stream has started, no FIN or RST was seen.
 * For frames of open lanes this module does the per-packet work: frame
 * decoding (Ethernet with any number of 802.1Q/802.1ad tags, Linux cooked
 * v1/v2, raw IPv4/IPv6), the lane lookup by addresses and ports, the in-order
 * check against the next expected sequence number, TLS record boundaries
 * (the length field of each record header), and the concatenation of
 * consecutive in-order payloads of a lane into chunks that end where a record
 * ends: Python receives stream bytes in chunks of many segments, each carrying
 * the time of the segment that completed its last record (as the Python path
 * times records), framed into records there a record at a time, never a packet
 * at a time.
 *
 * In the steady state (Python arms the lane with an *opener*, the direction's
 * record protection, once its keys are in place and nothing waits), the lane
 * gathers its records itself (the record not yet complete in its own buffer,
 * carried from run to run; Python hands over what it had framed of it) and
 * opens each record of application data as it completes, one call of the
 * opener per record: Python receives plaintexts, with no framing, state
 * machine or memory accounting of its own per record.  The first record the
 * opener declines (None: another inner content type, a tag that does not
 * match), or that is not application data, goes to Python as stream bytes with
 * everything after it, and the lane leaves the steady state until Python arms
 * it again.  Held bytes are bounded by a record and a segment per lane, and
 * counted (held_bytes) in the decryptor's memory budget.
 *
 * Anything else stops the batch at that frame and Python's decryptor takes it
 * (packets.classify, tcp.StreamReassembler): a frame of no lane, one that does
 * not decode on the common path (IP fragments, IPv6 extension headers,
 * malformed headers, other link types), and on a lane a SYN, FIN or RST or a
 * sequence number that is not the next one (loss, reordering,
 * retransmission).  In the last cases the lane is closed first and its
 * counters given back, so Python continues exactly where the lane stopped.
 * Semantics are those of the Python path; the tests compare both frame for
 * frame.
 *
 * Bounded memory: at most ``capacity`` lanes (open() refuses more), a few
 * dozen bytes each; a chunk is at most CHUNK_LIMIT bytes before it is handed
 * over.
 *
 * Python API (the seam is bridge/engine/lanes.py):
 *   Lanes(capacity, front_capacity=0, closed_capacity=0, segment=None)
 *   .closed_add(client_ip, client_port, server_ip, server_port), .closed_has(src, sport, dst, dport) -> bool
 *   .open(src, sport, dst, dport, handle, next_seq, header, remaining) -> bool
 *       header, remaining: where the current TLS record ends (RecordReader.boundary)
 *   .close(src, sport, dst, dport) -> state | None
 *   .arm(src, sport, dst, dport, opener, held, trailer=0) -> bool
 *   .run(frames, start) -> (stop, chunks, handled, closed)
 *       or, with a segment class, when the frame at start is Python's and nothing was done:
 *       its segment (made with the class), or None (it did not decode here)
 *   .decode(linktype, data, timestamp_ns) -> segment | None
 *   .resume: the last run ended after a record an armed lane declined (its stop is
 *       not a frame Python must take: run again from there once the lane is armed)
 *   .touched() -> [(handle, last_timestamp_ns)]
 *   len(lanes), .capacity
 * state = (handle, next_seq, packets, segments, bytes, last_ns, held)
 * chunk = (handle, timestamp_ns of its last segment, opened, used, rest, times)
 *   opened: None, or (an armed lane) the plaintexts of the records of
 *   application data opened in C (used: their bytes; times: the time of the
 *   segment that completed each, a list as long as opened, else None); rest: the
 *   bytes Python frames
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../capture/_batch.h"
#include "_front_core.h"
#include "_lanes_core.h"

/* ------------------------------------------------------------------------- */
/* Python object                                                              */

typedef struct {
    PyObject_HEAD
    LaneTable table;
    /* the connection front (_front_core.h): off while front.keys.capacity is 0 */
    Front front;
    /* recently closed connections (the decryptor's ``recently_closed``), the front's and Python's */
    ClosedSet closed;
    size_t max_pending, max_bytes;
    int64_t python_oldest_ns; /* Python's least recently active half-open connection */
    /* run(frames, start, limits): limits() gives the three above, asked at the run's first
       frame that may need them (a new SYN, a pending entry's client frame), not before */
    PyObject *limits; /* borrowed, during a run only, until called: NULL, the limits above hold */
    long long run_table_bytes; /* the tables' bytes as the run began */
    /* what the last runs did at the front, until take_front() */
    PyObject *promoted; /* an entry's description, or NULL */
    PyObject *ended;    /* descriptions of entries ended to make room, or NULL */
    Py_ssize_t created;
    size_t held_bytes; /* the armed lanes' held buffers */
    /* the class of Python's TCP segments (bridge.engine.packets.TcpSegment), or NULL:
       with it, run() hands Python the frame it must take decoded, and decode() works */
    PyObject *segment;
    /* the last run ended after a record its armed lane declined, not at a frame Python
       must take: once Python has framed that record and armed the lane again, the
       frames from stop on go to run() again */
    int resume;
} LanesObject;

static int Lanes_clear(LanesObject *self);

static void lane_release_handle(Lane *lane)
{
    PyObject *handle = lane->handle, *opener = lane->opener;
    lane->handle = lane->opener = NULL;
    PyMem_Free(lane->held); /* held_clear()ed first but at the end (Lanes_clear) */
    lane->held = NULL;
    lane->held_len = lane->held_cap = 0;
    Py_XDECREF(handle);
    Py_XDECREF(opener);
}

static void lane_release_key(LaneKey *key)
{
    lane_release_handle((Lane *)(void *)key);
}

static int Lanes_init(LanesObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", "front_capacity", "closed_capacity", "segment", NULL};
    Py_ssize_t capacity, front_capacity = 0, closed_capacity = 0;
    PyObject *segment = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|nnO:Lanes", kwlist, &capacity, &front_capacity, &closed_capacity,
                                     &segment))
        return -1;
    if (segment != Py_None && !PyCallable_Check(segment)) {
        PyErr_SetString(PyExc_TypeError, "segment must be a class (callable) or None");
        return -1;
    }
    if (capacity < 1 || capacity > (1 << 26) || front_capacity < 0 || front_capacity > (1 << 26) ||
        closed_capacity < 0 || closed_capacity > (1 << 27)) {
        PyErr_SetString(PyExc_ValueError, "capacity must be within 1..2^26, front_capacity within 0..2^26, "
                                          "closed_capacity within 0..2^27");
        return -1;
    }
    Lanes_clear(self);
    if (lanes_init(&self->table, (size_t)capacity) < 0 ||
        (front_capacity && front_init(&self->front, (size_t)front_capacity) < 0) ||
        closed_init(&self->closed, (size_t)closed_capacity) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->front.next_id = 1;
    self->python_oldest_ns = INT64_MAX;
    if (segment != Py_None) {
        Py_INCREF(segment);
        self->segment = segment;
    }
    return 0;
}

static void Lanes_dealloc(LanesObject *self)
{
    PyObject_GC_UnTrack(self);
    Lanes_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Lanes_traverse(LanesObject *self, visitproc visit, void *arg)
{
    LaneTable *t = &self->table;
    for (size_t i = 0; i < t->nslots; i++)
        if (t->slots[i]) {
            Py_VISIT((PyObject *)t->slots[i]->handle);
            Py_VISIT((PyObject *)t->slots[i]->opener);
        }
    Py_VISIT(self->promoted);
    Py_VISIT(self->ended);
    Py_VISIT(self->segment);
    return 0;
}

static int Lanes_clear(LanesObject *self)
{
    lanes_free(&self->table, lane_release_key);
    self->held_bytes = 0;
    front_free(&self->front);
    closed_free(&self->closed);
    self->max_pending = self->max_bytes = 0;
    Py_CLEAR(self->promoted);
    Py_CLEAR(self->ended);
    Py_CLEAR(self->segment);
    self->created = 0;
    return 0;
}

static int make_key(LaneKey *key, Py_buffer *src, unsigned sport, Py_buffer *dst, unsigned dport)
{
    if (src->len != dst->len || (src->len != 4 && src->len != 16)) {
        PyErr_SetString(PyExc_ValueError, "addresses must both be 4 (IPv4) or 16 (IPv6) bytes");
        return -1;
    }
    if (sport > 0xFFFF || dport > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    lane_key(key, (const uint8_t *)src->buf, (const uint8_t *)dst->buf, (int)src->len, (uint16_t)sport,
             (uint16_t)dport);
    return 0;
}

static PyObject *Lanes_open(LanesObject *self, PyObject *args)
{
    Py_buffer src, dst, header;
    unsigned sport, dport;
    PyObject *handle;
    unsigned long long next_seq;
    unsigned long remaining;
    if (!PyArg_ParseTuple(args, "y*Iy*IOKy*k:open", &src, &sport, &dst, &dport, &handle, &next_seq, &header,
                          &remaining)) {
        return NULL;
    }
    PyObject *result = NULL;
    LaneKey key;
    if (make_key(&key, &src, sport, &dst, dport) < 0)
        goto done;
    if (header.len > 4 || remaining > 0xFFFF + 5 || (header.len && remaining)) {
        PyErr_SetString(PyExc_ValueError, "record boundary: up to 4 header bytes, or the bytes remaining");
        goto done;
    }
    Lane *lane = NULL;
    int rc = lanes_insert(&self->table, &key, &lane);
    if (rc == LANES_EXISTS) {
        PyErr_SetString(PyExc_KeyError, "a lane with these addresses and ports is open");
        goto done;
    }
    if (rc == LANES_FULL) {
        result = Py_False;
        Py_INCREF(result);
        goto done;
    }
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(handle);
    lane->handle = handle;
    lane->next_seq = (uint32_t)next_seq;
    memcpy(lane->header, header.buf, (size_t)header.len);
    lane->header_len = (uint8_t)header.len;
    lane->remaining = (uint32_t)remaining;
    result = Py_True;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&header);
    return result;
}

static int held_add(LanesObject *self, Lane *lane, const uint8_t *p, size_t n);
static void held_clear(LanesObject *self, Lane *lane);

/* The lane's state as a tuple (held: the bytes of its steady state's record not yet
   complete, Python's to frame); the lane is then removed. */
static PyObject *state_of(LanesObject *self, Lane *lane)
{
    PyObject *state = Py_BuildValue("(OkKKKLy#)", (PyObject *)lane->handle, (unsigned long)lane->next_seq,
                                    (unsigned long long)lane->packets, (unsigned long long)lane->segments,
                                    (unsigned long long)lane->bytes, (long long)lane->last_ns,
                                    lane->held ? (const char *)lane->held : "", (Py_ssize_t)lane->held_len);
    if (state == NULL)
        return NULL;
    held_clear(self, lane);
    LaneKey key = lane->key;
    lanes_remove(&self->table, &key, lane_release_handle);
    return state;
}

static PyObject *Lanes_close(LanesObject *self, PyObject *args)
{
    Py_buffer src, dst;
    unsigned sport, dport;
    if (!PyArg_ParseTuple(args, "y*Iy*I:close", &src, &sport, &dst, &dport))
        return NULL;
    PyObject *result = NULL;
    LaneKey key;
    if (make_key(&key, &src, sport, &dst, dport) == 0) {
        Lane *lane = lanes_find(&self->table, &key);
        if (lane == NULL) {
            result = Py_None;
            Py_INCREF(result);
        } else {
            result = state_of(self, lane);
        }
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

#define MAX_TRAILER 16

static PyObject *Lanes_arm(LanesObject *self, PyObject *args)
{
    Py_buffer src, dst;
    unsigned sport, dport;
    Py_buffer held;
    PyObject *opener;
    unsigned trailer = 0;
    if (!PyArg_ParseTuple(args, "y*Iy*IOy*|I:arm", &src, &sport, &dst, &dport, &opener, &held, &trailer))
        return NULL;
    PyObject *result = NULL;
    LaneKey key;
    const uint8_t *h = (const uint8_t *)held.buf;
    size_t n = (size_t)held.len;
    if (!PyCallable_Check(opener))
        PyErr_SetString(PyExc_TypeError, "the opener must be callable");
    else if (trailer > MAX_TRAILER)
        PyErr_SetString(PyExc_ValueError, "the trailer is at most 16 bytes");
    else if (make_key(&key, &src, sport, &dst, dport) == 0) {
        Lane *lane = lanes_find(&self->table, &key);
        result = Py_False;
        /* held: the bytes of the record being read, which Python had framed so far */
        if (lane != NULL && lane->opener == NULL && lane_record_is(lane, h, n)) {
            if (n && held_add(self, lane, h, n) < 0) {
                result = NULL;
                goto done;
            }
            Py_INCREF(opener);
            lane->opener = opener;
            lane->trailer = (uint8_t)trailer;
            result = Py_True;
        }
        Py_INCREF(result);
    }
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&held);
    return result;
}


/* ------------------------------------------------------------------------- */
/* The connection front                                                        */

/* A pending entry as Python sees it (bridge/engine/lanes.py FrontEntry):
   (flow_id, ip_version, client_ip, client_port, server_ip, server_port, first_ns, last_ns, lru_ns, sent,
    client_random | None, why, frames), frames: the stored frames, each a 12-byte header
   (linktype: 2 bytes, length: 2, timestamp_ns: 8, big-endian) and its bytes */
static PyObject *front_describe(const FrontEntry *e)
{
    Py_ssize_t alen = e->key.bytes[0] == 4 ? 4 : 16;
    const uint8_t *k = e->key.bytes;
    PyObject *random = NULL;
    if (e->sent == SENT_HELLO) {
        for (int i = 0; i < e->nframes && random == NULL; i++) {
            int linktype;
            size_t length;
            int64_t ts;
            const uint8_t *p = front_frame(e, i, &linktype, &length, &ts);
            Segment seg;
            if (decode_frame(linktype, p, length, &seg) == 0 && seg.payload_len >= 43) {
                random = PyBytes_FromStringAndSize((const char *)seg.payload + 11, 32);
                if (random == NULL)
                    return NULL;
            }
        }
    }
    if (random == NULL) {
        random = Py_None;
        Py_INCREF(random);
    }
    PyObject *t = PyTuple_New(13);
    if (t == NULL) {
        Py_DECREF(random);
        return NULL;
    }
    PyObject *items[13] = {
        PyLong_FromUnsignedLongLong(e->flow_id),
        PyLong_FromLong(k[0]),
        PyBytes_FromStringAndSize((const char *)k + 1, alen),
        PyLong_FromLong(rd16(k + 33)),
        PyBytes_FromStringAndSize((const char *)k + 17, alen),
        PyLong_FromLong(rd16(k + 35)),
        PyLong_FromLongLong(e->first_ns),
        PyLong_FromLongLong(e->last_ns),
        PyLong_FromLongLong(e->lru_ns),
        PyLong_FromLong(e->sent),
        random,
        PyLong_FromLong(e->why),
        PyBytes_FromStringAndSize((const char *)e->frames, (Py_ssize_t)e->stored),
    };
    int failed = 0;
    for (int i = 0; i < 13; i++) {
        if (items[i] == NULL)
            failed = 1;
        PyTuple_SET_ITEM(t, i, items[i]); /* NULL items are skipped by the tuple's dealloc */
    }
    if (failed) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

/* End a pending entry: its description appended to out, the connection remembered
   as recently closed (as the Python path's end of a flow does), the entry gone. */
static int front_end(LanesObject *self, FrontEntry *e, int why, PyObject *out)
{
    Front *f = &self->front;
    e->why = (uint8_t)why;
    PyObject *d = front_describe(e);
    if (d == NULL)
        return -1;
    int rc = PyList_Append(out, d);
    Py_DECREF(d);
    if (rc < 0)
        return -1;
    if (closed_add(&self->closed, &e->key) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    front_unlink(f, e);
    front_release(e);
    return 0;
}

static size_t tables_bytes(LanesObject *self)
{
    return keys_slot_bytes(KEYS(&self->table)) + self->table.ntouched * sizeof(Lane *) +
           keys_slot_bytes(&self->front.keys);
}

/* Whether front_segment() may read the limits for this frame: a frame of a pending
   entry's client (stored), or a pure SYN (a new entry).  It may say yes when they are
   not read; never no when they are. */
static int front_may_use_limits(Front *f, const Segment *s)
{
    FrontEntry *e = (FrontEntry *)(void *)keys_find(&f->keys, &s->key);
    if (e != NULL)
        return e->state != FRONT_OWNED;
    return (s->flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK)) == TCP_SYN && s->payload_len == 0;
}

static void set_limits(LanesObject *self, long long max_pending, long long max_bytes, long long python_oldest)
{
    self->max_pending = max_pending > 0 ? (size_t)max_pending : 0;
    self->max_bytes = max_bytes > 0 ? (size_t)max_bytes : 0;
    self->python_oldest_ns = python_oldest;
}

/* The run's limits from its limits() callable: (max_pending, max_bytes before the tables,
   python_oldest_ns); the tables' bytes as the run began are taken twice from max_bytes
   (what they hold, and what they may grow by in the run). */
static int fetch_limits(LanesObject *self)
{
    PyObject *got = PyObject_CallNoArgs(self->limits);
    if (got == NULL)
        return -1;
    long long max_pending, max_bytes, python_oldest;
    int ok = PyTuple_Check(got) && PyArg_ParseTuple(got, "LLL:limits", &max_pending, &max_bytes, &python_oldest);
    Py_DECREF(got);
    if (!ok) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "limits() must return (max_pending, max_bytes, python_oldest_ns)");
        return -1;
    }
    if (max_bytes < LLONG_MIN / 2)
        max_bytes = LLONG_MIN / 2; /* no room either way; the subtraction below cannot overflow */
    set_limits(self, max_pending, max_bytes - 2 * self->run_table_bytes, python_oldest);
    self->limits = NULL; /* once a run */
    return 0;
}

/* What the runs did at the front since the last take_front(): anything to take. */
static int front_news(const LanesObject *self)
{
    return self->promoted != NULL || self->ended != NULL || self->created != 0;
}

/* A decoded frame no lane took, at the front: FRONT_PASS, _TAKEN or _PROMOTE; -1 on error.
   Room is made as the Python path makes it: the least recently active half-open
   connection goes first, never the one this frame is of; when that is Python's
   (or there is none here), Python takes the frame and decides. */
static int front_step(LanesObject *self, const Segment *s, int linktype, const uint8_t *frame, size_t length,
                      int64_t ts)
{
    if (self->limits != NULL && front_may_use_limits(&self->front, s) && fetch_limits(self) < 0)
        return -1;
    for (;;) {
        FrontEntry *e;
        int created, full;
        int verdict = front_segment(&self->front, s, linktype, frame, length, ts, self->max_pending,
                                    self->max_bytes, &e, &created, &full);
        if (full) {
            FrontEntry *old = self->front.oldest;
            if (old != NULL && old == e)
                old = old->next;
            if (old != NULL && old->lru_ns <= self->python_oldest_ns) {
                if (self->ended == NULL && (self->ended = PyList_New(0)) == NULL)
                    return -1;
                if (front_end(self, old, full - 1, self->ended) < 0)
                    return -1;
                continue;
            }
            if (e == NULL)
                return FRONT_PASS; /* a new connection: Python's, and Python makes room */
            verdict = FRONT_PROMOTE;
        }
        self->created += created;
        if (verdict == FRONT_PROMOTE) {
            PyObject *d = front_describe(e);
            if (d == NULL)
                return -1;
            Py_XSETREF(self->promoted, d);
            front_promoted(&self->front, e);
        }
        return verdict;
    }
}

static PyObject *Lanes_front_limits(LanesObject *self, PyObject *args)
{
    Py_ssize_t max_pending, max_bytes;
    long long python_oldest = INT64_MAX;
    if (!PyArg_ParseTuple(args, "nn|L:front_limits", &max_pending, &max_bytes, &python_oldest))
        return NULL;
    set_limits(self, max_pending, max_bytes, python_oldest);
    Py_RETURN_NONE;
}

static PyObject *Lanes_take_front(LanesObject *self, PyObject *unused)
{
    if (!front_news(self))
        Py_RETURN_NONE;
    PyObject *promoted = self->promoted ? self->promoted : Py_None;
    PyObject *ended = self->ended ? self->ended : PyList_New(0);
    if (ended == NULL)
        return NULL;
    if (promoted == Py_None)
        Py_INCREF(promoted);
    PyObject *result = Py_BuildValue("(NNn)", promoted, ended, self->created);
    self->promoted = self->ended = NULL;
    self->created = 0;
    return result;
}

static int key_of(LaneKey *key, PyObject *args, const char *format)
{
    Py_buffer src, dst;
    unsigned sport, dport;
    if (!PyArg_ParseTuple(args, format, &src, &sport, &dst, &dport))
        return -1;
    int rc = make_key(key, &src, sport, &dst, dport);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return rc;
}

static PyObject *Lanes_front_own(LanesObject *self, PyObject *args)
{
    LaneKey key;
    if (key_of(&key, args, "y*Iy*I:front_own") < 0)
        return NULL;
    if (self->front.keys.capacity == 0)
        Py_RETURN_FALSE;
    return PyBool_FromLong(front_own(&self->front, &key) == 0);
}

static PyObject *Lanes_front_disown(LanesObject *self, PyObject *args)
{
    LaneKey key;
    if (key_of(&key, args, "y*Iy*I:front_disown") < 0)
        return NULL;
    if (self->front.keys.capacity)
        front_disown(&self->front, &key);
    Py_RETURN_NONE;
}

static PyObject *Lanes_closed_add(LanesObject *self, PyObject *args)
{
    LaneKey key;
    if (key_of(&key, args, "y*Iy*I:closed_add") < 0)
        return NULL;
    if (closed_add(&self->closed, &key) < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* closed_has(src, sport, dst, dport): a recently closed connection, either way round. */
static PyObject *Lanes_closed_has(LanesObject *self, PyObject *args)
{
    LaneKey key, reversed;
    if (key_of(&key, args, "y*Iy*I:closed_has") < 0)
        return NULL;
    reverse_key(&reversed, &key);
    return PyBool_FromLong(closed_has(&self->closed, &key) || closed_has(&self->closed, &reversed));
}

/* end(count, why): the count least recently active pending entries, ended. */
static PyObject *Lanes_front_end(LanesObject *self, PyObject *args)
{
    Py_ssize_t count;
    int why;
    if (!PyArg_ParseTuple(args, "ni:front_end", &count, &why))
        return NULL;
    PyObject *out = PyList_New(0);
    while (out != NULL && count-- > 0 && self->front.oldest != NULL)
        if (front_end(self, self->front.oldest, why, out) < 0)
            Py_CLEAR(out);
    return out;
}

/* expire(before_ns): pending entries last active (to within the granularity) before before_ns, ended. */
static PyObject *Lanes_front_expire(LanesObject *self, PyObject *args)
{
    long long before;
    if (!PyArg_ParseTuple(args, "L:front_expire", &before))
        return NULL;
    PyObject *out = PyList_New(0);
    while (out != NULL && self->front.oldest != NULL && self->front.oldest->lru_ns < before)
        if (front_end(self, self->front.oldest, 0, out) < 0)
            Py_CLEAR(out);
    return out;
}

static PyObject *Lanes_allocate_id(LanesObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(self->front.next_id++);
}

static PyObject *Lanes_get_closed_count(LanesObject *self, void *closure)
{
    return PyLong_FromSize_t(self->closed.keys.count);
}

static PyObject *Lanes_get_front_pending(LanesObject *self, void *closure)
{
    return PyLong_FromSize_t(self->front.pending);
}

static PyObject *Lanes_get_front_bytes(LanesObject *self, void *closure)
{
    return PyLong_FromSize_t(self->front.bytes);
}

static PyObject *Lanes_get_front_oldest_ns(LanesObject *self, void *closure)
{
    if (self->front.oldest == NULL)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->front.oldest->lru_ns);
}

static PyObject *Lanes_get_table_bytes(LanesObject *self, void *closure)
{
    return PyLong_FromSize_t(tables_bytes(self));
}

static PyObject *Lanes_get_resume(LanesObject *self, void *closure)
{
    return PyBool_FromLong(self->resume);
}

static PyObject *Lanes_get_compiled_bytes(LanesObject *self, void *closure)
{
    return PyLong_FromSize_t(self->front.bytes + tables_bytes(self) + self->held_bytes);
}

static PyObject *Lanes_get_front_capacity(LanesObject *self, void *closure)
{
    return PyLong_FromSize_t(self->front.keys.capacity);
}

static PyObject *str_timestamp_ns, *str_linktype, *str_data, *str_buffer;

/* The chunk being gathered: consecutive in-order payloads of one lane. */
#define CHUNK_LIMIT (256 * 1024)

typedef struct {
    Lane *lane;
    int64_t ts;
    uint8_t *buf;
    size_t len, cap;
} Chunk;

static int chunk_flush(Chunk *c, PyObject *chunks)
{
    if (c->lane == NULL || c->len == 0)
        return 0;
    PyObject *item = Py_BuildValue("(OLOny#O)", (PyObject *)c->lane->handle, (long long)c->ts, Py_None, (Py_ssize_t)0,
                                   (const char *)c->buf, (Py_ssize_t)c->len, Py_None);
    c->len = 0;
    c->lane = NULL;
    if (item == NULL)
        return -1;
    int rc = PyList_Append(chunks, item);
    Py_DECREF(item);
    return rc;
}

/* Append n bytes to a growing buffer (its capacity doubled from first): the bytes it grew by, or -1. */
static Py_ssize_t buffer_append(uint8_t **buf, size_t *len, size_t *cap, size_t first, const uint8_t *p, size_t n)
{
    size_t grown = 0;
    if (*len + n > *cap) {
        size_t want = *cap ? *cap : first;
        while (want < *len + n)
            want *= 2;
        uint8_t *b = PyMem_Realloc(*buf, want);
        if (b == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        grown = want - *cap;
        *buf = b;
        *cap = want;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    return (Py_ssize_t)grown;
}

static int chunk_add(Chunk *c, PyObject *chunks, Lane *lane, int64_t ts, const uint8_t *p, size_t n)
{
    if (c->lane != lane || c->len + n > CHUNK_LIMIT)
        if (chunk_flush(c, chunks) < 0)
            return -1;
    if (buffer_append(&c->buf, &c->len, &c->cap, 65536, p, n) < 0)
        return -1;
    c->lane = lane;
    c->ts = ts;
    return 0;
}

/* ------------------------------------------------------------------------- */
/* The steady state: an armed lane gathers and opens its records itself.       */

/* Append n bytes to the lane's held bytes (the table's held_bytes follows its allocations). */
static int held_add(LanesObject *self, Lane *lane, const uint8_t *p, size_t n)
{
    Py_ssize_t grown = buffer_append(&lane->held, &lane->held_len, &lane->held_cap, 4096, p, n);
    if (grown < 0)
        return -1;
    self->held_bytes += (size_t)grown;
    return 0;
}

/* Drop the lane's held bytes (and their buffer). */
static void held_clear(LanesObject *self, Lane *lane)
{
    self->held_bytes -= lane->held_cap;
    PyMem_Free(lane->held);
    lane->held = NULL;
    lane->held_len = lane->held_cap = 0;
}

/* Leave the steady state (the held bytes are the caller's to hand over first). */
static void lane_disarm(LanesObject *self, Lane *lane)
{
    PyObject *opener = lane->opener;
    lane->opener = NULL;
    lane->trailer = 0;
    held_clear(self, lane);
    Py_XDECREF(opener);
}

/*
 * The opener's result without its last ``trailer`` bytes (TLS 1.3's inner content
 * type): shortened in place when nothing else holds it (a record's plaintext is
 * not copied again), else copied.  On error *bytes is released and NULL.
 */
static int trim_trailer(PyObject **bytes, size_t trailer)
{
    PyObject *b = *bytes;
    Py_ssize_t size = PyBytes_GET_SIZE(b);
    if ((size_t)size < trailer) {
        Py_DECREF(b);
        *bytes = NULL;
        PyErr_SetString(PyExc_ValueError, "the opener's result is shorter than its trailer");
        return -1;
    }
    if (PyBytes_CheckExact(b) && Py_REFCNT(b) == 1)
        return _PyBytes_Resize(bytes, size - (Py_ssize_t)trailer); /* frees and NULLs on error */
    *bytes = PyBytes_FromStringAndSize(PyBytes_AS_STRING(b), size - (Py_ssize_t)trailer);
    Py_DECREF(b);
    return *bytes == NULL ? -1 : 0;
}

/*
 * The records an armed lane opened, gathered across its segments until anything
 * else goes into the run's chunks (another lane's records or bytes, a lane's
 * state), then handed over as one chunk: (handle, ts, opened, used, rest, times),
 * times the time of the segment that completed each record.  Consecutive records of
 * a busy connection cost Python one chunk, not one each; the order of everything
 * the run hands over is the frames' order, as before.
 */
typedef struct {
    Lane *lane; /* NULL: nothing gathered */
    int64_t ts; /* the last segment's */
    PyObject *opened, *times;
    size_t used;
} Opened;

static void opened_clear(Opened *o)
{
    Py_CLEAR(o->opened);
    Py_CLEAR(o->times);
    o->lane = NULL;
    o->used = 0;
}

/* Hand over what o gathered, with rest (the bytes from a declined record on; NULL: none). */
static int opened_flush(Opened *o, PyObject *chunks, PyObject *rest)
{
    if (o->lane == NULL)
        return 0;
    PyObject *item = rest != NULL ? Py_BuildValue("(OLOnOO)", (PyObject *)o->lane->handle, (long long)o->ts, o->opened,
                                                  (Py_ssize_t)o->used, rest, o->times)
                                  : Py_BuildValue("(OLOny#O)", (PyObject *)o->lane->handle, (long long)o->ts,
                                                  o->opened, (Py_ssize_t)o->used, "", (Py_ssize_t)0, o->times);
    opened_clear(o);
    if (item == NULL)
        return -1;
    int rc = PyList_Append(chunks, item);
    Py_DECREF(item);
    return rc;
}

/*
 * An armed lane took n payload bytes at ts: gathered; the whole records of
 * application data now complete are opened, one opener(header, fragment) call
 * each (-> plaintext, or None when the record is anything else: another inner
 * content type, a tag that does not match), and added to what o gathered for this
 * lane (what it gathered for another lane is handed over first).  A record
 * declined (or not application data) is handed over at once with everything from
 * it on as rest, which Python frames, and the lane leaves the steady state: 1 then
 * (the run ends after this frame, so that Python arms the lane again at once: a
 * TLS 1.3 session ticket or KeyUpdate does not leave the rest of a batch unarmed).
 */
static int lane_gather(LanesObject *self, Lane *lane, int64_t ts, const uint8_t *p, size_t n, PyObject *chunks,
                       Opened *o)
{
    if (held_add(self, lane, p, n) < 0)
        return -1;
    const uint8_t *h = lane->held;
    size_t len = lane->held_len, at = 0, size = 0;
    while (at < len && (size = application_record(h + at, len - at)) != RECORD_INCOMPLETE && size != RECORD_OTHER)
        at += size;
    int declined = size == RECORD_OTHER;
    if (at == 0 && !declined)
        return 0; /* the record is not complete yet */
    if (o->lane != lane) {
        if (opened_flush(o, chunks, NULL) < 0)
            return -1;
        o->opened = PyList_New(0);
        o->times = PyList_New(0);
        if (o->opened == NULL || o->times == NULL) {
            opened_clear(o);
            return -1;
        }
        o->lane = lane;
    }
    o->ts = ts;
    PyObject *data = NULL, *view = NULL, *when = NULL;
    size_t used = 0;
    if (at) {
        data = PyBytes_FromStringAndSize((const char *)h, (Py_ssize_t)at);
        view = data ? PyMemoryView_FromObject(data) : NULL;
        when = view ? PyLong_FromLongLong((long long)ts) : NULL;
        if (when == NULL)
            goto fail;
    }
    while (used < at) {
        size = 5u + rd16(h + used + 3);
        PyObject *header = PySequence_GetSlice(view, (Py_ssize_t)used, (Py_ssize_t)(used + 5));
        PyObject *fragment = header ? PySequence_GetSlice(view, (Py_ssize_t)(used + 5), (Py_ssize_t)(used + size)) : NULL;
        PyObject *plaintext = fragment ? PyObject_CallFunctionObjArgs((PyObject *)lane->opener, header, fragment, NULL)
                                       : NULL;
        Py_XDECREF(header);
        Py_XDECREF(fragment);
        if (plaintext == NULL)
            goto fail;
        if (plaintext == Py_None) {
            Py_DECREF(plaintext);
            declined = 1;
            break;
        }
        if (!PyBytes_Check(plaintext)) {
            Py_DECREF(plaintext);
            PyErr_SetString(PyExc_TypeError, "the opener must return bytes or None");
            goto fail;
        }
        if (lane->trailer && trim_trailer(&plaintext, lane->trailer) < 0)
            goto fail;
        int rc = PyList_Append(o->opened, plaintext);
        Py_DECREF(plaintext);
        if (rc < 0 || PyList_Append(o->times, when) < 0)
            goto fail;
        used += size;
        o->used += size;
    }
    Py_CLEAR(view);
    Py_CLEAR(data);
    Py_CLEAR(when);
    if (declined) {
        PyObject *rest = PyBytes_FromStringAndSize((const char *)h + used, (Py_ssize_t)(len - used));
        if (rest == NULL)
            return -1;
        int rc = opened_flush(o, chunks, rest);
        Py_DECREF(rest);
        lane_disarm(self, lane);
        return rc < 0 ? rc : 1;
    }
    if (used == len) {
        held_clear(self, lane);
    } else {
        memmove(lane->held, lane->held + used, len - used);
        lane->held_len = len - used;
    }
    return 0;
fail:
    Py_XDECREF(view);
    Py_XDECREF(data);
    Py_XDECREF(when);
    return -1;
}

/* Python's TCP segment of a frame decoded here: TcpSegment(timestamp_ns, ip_version,
   src, dst, sport, dport, seq, ack, flags, window, payload), as packets.classify makes it
   (never for a frame with VLAN tags: classify gives their ids, Python's path decodes it). */
static PyObject *make_segment(PyObject *type, const Segment *s, long long ts)
{
    const uint8_t *k = s->key.bytes, *t = s->tcp;
    Py_ssize_t alen = k[0] == 4 ? 4 : 16;
    PyObject *args[11] = {
        PyLong_FromLongLong(ts),
        PyLong_FromLong(k[0] == 4 ? 4 : 6),
        PyBytes_FromStringAndSize((const char *)k + 1, alen),
        PyBytes_FromStringAndSize((const char *)k + 17, alen),
        PyLong_FromLong(rd16(t)),
        PyLong_FromLong(rd16(t + 2)),
        PyLong_FromUnsignedLong(rd32(t + 4)),
        PyLong_FromUnsignedLong(rd32(t + 8)),
        PyLong_FromLong(t[13] | ((t[12] & 1) << 8)), /* NS/AE as 0x100 */
        PyLong_FromLong(rd16(t + 14)),
        PyBytes_FromStringAndSize((const char *)s->payload, (Py_ssize_t)s->payload_len),
    };
    PyObject *result = NULL;
    size_t i, n = sizeof args / sizeof args[0];
    for (i = 0; i < n && args[i] != NULL; i++)
        ;
    if (i == n)
        result = PyObject_Vectorcall(type, args, n, NULL);
    for (i = 0; i < n; i++)
        Py_XDECREF(args[i]);
    return result;
}

static PyObject *Lanes_decode(LanesObject *self, PyObject *args)
{
    int linktype;
    Py_buffer data;
    long long ts;
    if (!PyArg_ParseTuple(args, "iy*L:decode", &linktype, &data, &ts))
        return NULL;
    if (self->segment == NULL) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_TypeError, "decode() needs Lanes(..., segment=TcpSegment)");
        return NULL;
    }
    Segment s;
    PyObject *result;
    if (decode_frame(linktype, (const uint8_t *)data.buf, (size_t)data.len, &s) == 0 && !s.tagged) {
        result = make_segment(self->segment, &s, ts);
    } else {
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&data);
    return result;
}

static PyObject *Lanes_run_frames(LanesObject *self, PyObject *frames, Py_ssize_t start);

static PyObject *Lanes_run(LanesObject *self, PyObject *args)
{
    PyObject *frames, *limits = Py_None;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "On|O:run", &frames, &start, &limits))
        return NULL;
    if (limits != Py_None && !PyCallable_Check(limits)) {
        PyErr_SetString(PyExc_TypeError, "limits must be callable");
        return NULL;
    }
    self->limits = limits == Py_None ? NULL : limits; /* NULL: front_limits()'s, as set */
    self->resume = 0;
    self->run_table_bytes = (long long)tables_bytes(self);
    PyObject *result = Lanes_run_frames(self, frames, start);
    self->limits = NULL;
    return result;
}

static PyObject *Lanes_run_frames(LanesObject *self, PyObject *frames, Py_ssize_t start)
{
    /* a FrameBatch (bridge.capture._records, _batch.h) is read in place: its records
       through the buffer protocol, the frames' bytes in its buffer; else a sequence of Frames */
    PyObject *seq = NULL, **items = NULL, *base = NULL;
    Py_buffer view = {0};
    const BatchRecord *records = NULL;
    const uint8_t *base_ptr = NULL;
    size_t base_len = 0;
    long batch_linktype = 0;
    Py_ssize_t n;
    if (!PyList_CheckExact(frames) && !PyTuple_CheckExact(frames) && PyObject_CheckBuffer(frames)) {
        if (PyObject_GetBuffer(frames, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        base = PyObject_GetAttr(frames, str_buffer);
        PyObject *lt_o = base ? PyObject_GetAttr(frames, str_linktype) : NULL;
        batch_linktype = lt_o ? PyLong_AsLong(lt_o) : -1;
        Py_XDECREF(lt_o);
        if (base == NULL || PyErr_Occurred() || !PyBytes_Check(base) || view.len % (Py_ssize_t)sizeof(BatchRecord)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "a frame batch needs bytes and whole records");
            Py_XDECREF(base);
            PyBuffer_Release(&view);
            return NULL;
        }
        records = (const BatchRecord *)view.buf;
        n = view.len / (Py_ssize_t)sizeof(BatchRecord);
        base_ptr = (const uint8_t *)PyBytes_AS_STRING(base);
        base_len = (size_t)PyBytes_GET_SIZE(base);
    } else {
        seq = PySequence_Fast(frames, "frames must be a sequence");
        if (seq == NULL)
            return NULL;
        n = PySequence_Fast_GET_SIZE(seq);
        items = PySequence_Fast_ITEMS(seq);
    }
    PyObject *chunks = PyList_New(0);
    PyObject *closed = Py_None;
    Py_INCREF(closed);
    Chunk chunk = {NULL, 0, NULL, 0, 0};
    /* at most one of the two gathers at a time: either is handed over before the other starts */
    Opened opened = {NULL, 0, NULL, NULL, 0};
    Py_ssize_t handled = 0, i = start < 0 ? 0 : start;
    /* the first frame is Python's, with nothing done before it and no news at the front:
       Python gets that frame's segment (made here if it decoded), not the tuple */
    PyObject *made = NULL;
    int python_first = 0;
    if (chunks == NULL)
        goto fail;
    for (; i < n; i++) {
        long long ts;
        long linktype;
        const uint8_t *frame_ptr;
        size_t frame_len;
        PyObject *data_o = NULL;
        if (records != NULL) {
            const BatchRecord *r = &records[i];
            if (r->offset > base_len || r->length > base_len - r->offset) {
                python_first = handled == 0;
                break; /* Python's path says what it is */
            }
            ts = r->timestamp_ns;
            linktype = batch_linktype;
            frame_ptr = base_ptr + r->offset;
            frame_len = r->length;
        } else {
            PyObject *frame = items[i];
            PyObject *ts_o = PyObject_GetAttr(frame, str_timestamp_ns);
            PyObject *lt_o = ts_o ? PyObject_GetAttr(frame, str_linktype) : NULL;
            data_o = lt_o ? PyObject_GetAttr(frame, str_data) : NULL;
            if (data_o == NULL) {
                Py_XDECREF(ts_o);
                Py_XDECREF(lt_o);
                goto fail;
            }
            ts = PyLong_AsLongLong(ts_o);
            linktype = PyLong_AsLong(lt_o);
            Py_DECREF(ts_o);
            Py_DECREF(lt_o);
            if ((ts == -1 || linktype == -1) && PyErr_Occurred()) {
                Py_DECREF(data_o);
                goto fail;
            }
            if (!PyBytes_Check(data_o)) {
                Py_DECREF(data_o);
                python_first = handled == 0;
                break; /* Python's path says what it is */
            }
            frame_ptr = (const uint8_t *)PyBytes_AS_STRING(data_o);
            frame_len = (size_t)PyBytes_GET_SIZE(data_o);
        }
        Segment s;
        int decoded = decode_frame((int)linktype, frame_ptr, frame_len, &s);
        Lane *lane = decoded == 0 ? lanes_find(&self->table, &s.key) : NULL;
        if (lane == NULL) {
            int verdict = FRONT_PASS;
            if (decoded == 0 && self->front.keys.capacity)
                verdict = front_step(self, &s, (int)linktype, frame_ptr, frame_len, ts);
            if (verdict == FRONT_TAKEN) {
                Py_XDECREF(data_o);
                handled++;
                continue;
            }
            if (verdict >= 0 && handled == 0 && !front_news(self)) {
                python_first = 1;
                if (decoded == 0 && !s.tagged && self->segment != NULL)
                    made = make_segment(self->segment, &s, ts); /* the frame's bytes still held */
            }
            Py_XDECREF(data_o);
            if (verdict < 0 || (python_first && made == NULL && PyErr_Occurred()))
                goto fail;
            break; /* Python takes it (after the promoted entry's frames) */
        }
        long boundary;
        if (lane_segment(&self->table, lane, &s, ts, &boundary) == LANE_REFUSED) {
            Py_XDECREF(data_o);
            /* what the lanes gathered goes first, then this one's state */
            if (opened_flush(&opened, chunks, NULL) < 0 || chunk_flush(&chunk, chunks) < 0)
                goto fail;
            Py_DECREF(closed);
            closed = state_of(self, lane);
            if (closed == NULL)
                goto fail;
            break;
        }
        handled++;
        int rc = 0;
        if (lane->opener != NULL) {
            if (s.payload_len) {
                /* the other lane's chunk goes first: chunks and opened records in the frames' order */
                if (chunk.lane != NULL && chunk.lane != lane)
                    rc = chunk_flush(&chunk, chunks);
                if (rc == 0)
                    rc = lane_gather(self, lane, ts, s.payload, s.payload_len, chunks, &opened);
                if (rc == 1) { /* a record declined: Python frames it and arms the lane again */
                    Py_XDECREF(data_o);
                    self->resume = 1;
                    i++;
                    break;
                }
            }
        } else if (s.payload_len) {
            /* another lane's bytes: the opened records gathered so far go first */
            if (opened.lane != NULL)
                rc = opened_flush(&opened, chunks, NULL);
            if (rc == 0 && boundary >= 0) {
                /* a chunk ends where a record ends, with the time of the segment that ended it
                   (the record's time on the Python path); the rest begins the next chunk */
                size_t cut = (size_t)boundary;
                rc = chunk_add(&chunk, chunks, lane, ts, s.payload, cut);
                if (rc == 0)
                    rc = chunk_flush(&chunk, chunks);
                if (rc == 0 && cut < s.payload_len)
                    rc = chunk_add(&chunk, chunks, lane, ts, s.payload + cut, s.payload_len - cut);
            } else if (rc == 0) {
                rc = chunk_add(&chunk, chunks, lane, ts, s.payload, s.payload_len);
            }
        }
        Py_XDECREF(data_o);
        if (rc < 0)
            goto fail;
    }
    if (opened_flush(&opened, chunks, NULL) < 0 || chunk_flush(&chunk, chunks) < 0)
        goto fail;
    PyMem_Free(chunk.buf);
    Py_XDECREF(seq);
    Py_XDECREF(base);
    if (records != NULL)
        PyBuffer_Release(&view);
    if (python_first && self->segment != NULL && !front_news(self)) {
        Py_DECREF(chunks);
        Py_DECREF(closed);
        if (made == NULL)
            Py_RETURN_NONE;
        return made;
    }
    Py_XDECREF(made);
    return Py_BuildValue("(nNnN)", i, chunks, handled, closed);
fail:
    Py_XDECREF(made);
    opened_clear(&opened);
    PyMem_Free(chunk.buf);
    Py_XDECREF(seq);
    Py_XDECREF(base);
    if (records != NULL)
        PyBuffer_Release(&view);
    Py_XDECREF(chunks);
    Py_XDECREF(closed);
    return NULL;
}

static PyObject *Lanes_touched(LanesObject *self, PyObject *unused)
{
    LaneTable *t = &self->table;
    PyObject *out = PyList_New((Py_ssize_t)t->ntouched);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < t->ntouched; i++) {
        Lane *lane = t->touched[i];
        PyObject *item = Py_BuildValue("(OL)", (PyObject *)lane->handle, (long long)lane->last_ns);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
    for (size_t i = 0; i < t->ntouched; i++)
        t->touched[i]->touched = 0;
    t->ntouched = 0;
    return out;
}

static Py_ssize_t Lanes_len(LanesObject *self)
{
    return (Py_ssize_t)self->table.count;
}

static PyObject *Lanes_get_held_bytes(LanesObject *self, void *closure)
{
    return PyLong_FromSize_t(self->held_bytes);
}

static PyObject *Lanes_get_capacity(LanesObject *self, void *closure)
{
    return PyLong_FromSize_t(self->table.capacity);
}

static PyMethodDef Lanes_methods[] = {
    {"open", (PyCFunction)Lanes_open, METH_VARARGS,
     "open(src, sport, dst, dport, handle, next_seq, header, remaining) -> bool: hand a direction over "
     "(False: capacity reached)"},
    {"close", (PyCFunction)Lanes_close, METH_VARARGS,
     "close(src, sport, dst, dport) -> state | None: take a direction back"},
    {"arm", (PyCFunction)Lanes_arm, METH_VARARGS,
     "arm(src, sport, dst, dport, opener, held, trailer=0) -> bool: the direction is in the steady state: the "
     "lane gathers its records (held: the bytes of the record being read that Python had framed) and opens those "
     "of application data with opener(header, fragment) -> plaintext | None, whose last trailer bytes (at most 16: "
     "TLS 1.3's inner content type) are not plaintext and are dropped (False: no such lane, already armed, or "
     "held does not match the lane's record boundary)"},
    {"run", (PyCFunction)Lanes_run, METH_VARARGS,
     "run(frames, start[, limits]) -> (stop, chunks, handled, closed): the frames of open lanes from start on, "
     "up to the first that Python must take; with a segment class, when that is the frame at start and nothing "
     "was done (nothing taken, no lane closed, no news at the front), its segment instead (None: it did not "
     "decode here, Python's path decodes it); limits() -> (max_pending, max_bytes, python_oldest_ns), if given, "
     "is called at the run's first frame that may need the front's limits (max_bytes less twice the tables' "
     "bytes as the run began), instead of front_limits()'s"},
    {"front_limits", (PyCFunction)Lanes_front_limits, METH_VARARGS,
     "front_limits(max_pending, max_bytes[, python_oldest_ns]): the front's share of max_flows and memory_limit "
     "(0: no new entries), and when Python's least recently active half-open connection was last active"},
    {"take_front", (PyCFunction)Lanes_take_front, METH_NOARGS,
     "take_front() -> None | (promoted, ended, created): what the runs since the last call did at the front"},
    {"front_own", (PyCFunction)Lanes_front_own, METH_VARARGS,
     "front_own(client_ip, client_port, server_ip, server_port) -> bool: Python tracks this connection"},
    {"front_disown", (PyCFunction)Lanes_front_disown, METH_VARARGS,
     "front_disown(client_ip, client_port, server_ip, server_port): Python no longer tracks it"},
    {"closed_add", (PyCFunction)Lanes_closed_add, METH_VARARGS,
     "closed_add(client_ip, client_port, server_ip, server_port): remember a finished connection (the last "
     "closed_capacity are remembered, first in first out; the front's entries are remembered as they end)"},
    {"closed_has", (PyCFunction)Lanes_closed_has, METH_VARARGS,
     "closed_has(src, sport, dst, dport) -> bool: a remembered connection, either way round"},
    {"front_end", (PyCFunction)Lanes_front_end, METH_VARARGS,
     "front_end(count, why) -> [entry]: the least recently active pending entries, ended"},
    {"front_expire", (PyCFunction)Lanes_front_expire, METH_VARARGS,
     "front_expire(before_ns) -> [entry]: pending entries not active since before_ns, ended"},
    {"allocate_id", (PyCFunction)Lanes_allocate_id, METH_NOARGS,
     "allocate_id() -> int: the next flow id (the front numbers its entries from the same sequence)"},
    {"decode", (PyCFunction)Lanes_decode, METH_VARARGS,
     "decode(linktype, data, timestamp_ns) -> segment | None: the frame's TCP segment made with the segment class "
     "(None: not decoded here, Python's path decodes it: other link types, VLAN tags, IPv6 extension headers, "
     "IP fragments, not TCP, malformed)"},
    {"touched", (PyCFunction)Lanes_touched, METH_NOARGS,
     "touched() -> [(handle, last_timestamp_ns)]: lanes that had frames since the last call"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Lanes_getset[] = {
    {"capacity", (getter)Lanes_get_capacity, NULL, "the most lanes open at once", NULL},
    {"closed_count", (getter)Lanes_get_closed_count, NULL, "connections remembered as recently closed", NULL},
    {"front_pending", (getter)Lanes_get_front_pending, NULL, "pending entries at the front", NULL},
    {"front_bytes", (getter)Lanes_get_front_bytes, NULL, "bytes charged for the pending entries", NULL},
    {"front_capacity", (getter)Lanes_get_front_capacity, NULL, "entries the front may hold (0: off)", NULL},
    {"held_bytes", (getter)Lanes_get_held_bytes, NULL,
     "bytes the armed lanes hold for records not yet complete (their buffers)", NULL},
    {"table_bytes", (getter)Lanes_get_table_bytes, NULL,
     "bytes of the tables' slot arrays now (they grow with the entries)", NULL},
    {"resume", (getter)Lanes_get_resume, NULL,
     "the last run ended after a record an armed lane declined (handed over with what follows; the lane left the "
     "steady state), not at a frame Python must take: the frames from its stop go to run() again once Python has "
     "framed that record and armed the lane", NULL},
    {"compiled_bytes", (getter)Lanes_get_compiled_bytes, NULL,
     "what the module holds, as the memory budget counts it: front_bytes + table_bytes + held_bytes", NULL},
    {"front_oldest_ns", (getter)Lanes_get_front_oldest_ns, NULL,
     "when the least recently active pending entry was last active (None: no entry)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Lanes_as_sequence = {
    .sq_length = (lenfunc)Lanes_len,
};

static PyTypeObject LanesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "bridge.engine._lanes.Lanes",
    .tp_basicsize = sizeof(LanesObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Established TLS stream directions handled per packet in C (see the module's source header).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lanes_init,
    .tp_dealloc = (destructor)Lanes_dealloc,
    .tp_traverse = (traverseproc)Lanes_traverse,
    .tp_clear = (inquiry)Lanes_clear,
    .tp_methods = Lanes_methods,
    .tp_getset = Lanes_getset,
    .tp_as_sequence = &Lanes_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bridge.engine._lanes",
    .m_doc = "The compiled per-packet path of established TLS streams (see bridge/engine/lanes.py).",
    .m_size = -1,
    .m_methods = NULL,
};

PyMODINIT_FUNC PyInit__lanes(void)
{
    str_timestamp_ns = PyUnicode_InternFromString("timestamp_ns");
    str_linktype = PyUnicode_InternFromString("linktype");
    str_data = PyUnicode_InternFromString("data");
    str_buffer = PyUnicode_InternFromString("buffer");
    if (!str_timestamp_ns || !str_linktype || !str_data || !str_buffer)
        return NULL;
    if (PyType_Ready(&LanesType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LanesType);
    if (PyModule_AddObject(m, "Lanes", (PyObject *)&LanesType) < 0) {
        Py_DECREF(&LanesType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "CHUNK_LIMIT", CHUNK_LIMIT);
    PyModule_AddIntConstant(m, "FRONT_MAX_FRAMES", FRONT_MAX_FRAMES);
    PyModule_AddIntConstant(m, "FRONT_MAX_STORED", FRONT_MAX_STORED);
    return m;
}
