/*
 * The pcap record header (16 bytes, little-endian, as bridge.capture.pcapwriter
 * writes files): one definition for every C module that writes records
 * (bridge.capture._records' pack_pcap, bridge.reinject._segments' segments_pcap);
 * with Python.h included first, the room they are written in at a bytearray's end.
 */
#ifndef BRIDGE_PCAP_RECORD_H
#define BRIDGE_PCAP_RECORD_H

#include <stdint.h>

#define PCAP_RECORD_HEADER 16

static inline void pcap_wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}

/* The seconds and fraction (nanoseconds, or microseconds) of a timestamp_ns that is not negative. */
static inline void pcap_stamp(long long stamp_ns, int nanosecond, uint32_t *sec, uint32_t *frac)
{
    *sec = (uint32_t)(stamp_ns / 1000000000LL);
    *frac = (uint32_t)(stamp_ns % 1000000000LL);
    if (!nanosecond)
        *frac /= 1000;
}

/* A record's header at p: caplen bytes of a frame of len bytes follow it. */
static inline void pcap_record_header(uint8_t *p, uint32_t sec, uint32_t frac, uint32_t caplen, uint32_t len)
{
    pcap_wr32(p, sec);
    pcap_wr32(p + 4, frac);
    pcap_wr32(p + 8, caplen);
    pcap_wr32(p + 12, len);
}

#ifdef Py_PYTHON_H
/* Room for size more bytes at the end of buffer (a bytearray: a pcap writer's), for
 * records built where they will lie: where the room starts, or NULL with an exception
 * set (too large, or the buffer is exported and cannot be resized). */
static inline uint8_t *pcap_buffer_grow(PyObject *buffer, Py_ssize_t size)
{
    Py_ssize_t start = PyByteArray_GET_SIZE(buffer);
    if (size > PY_SSIZE_T_MAX - start) {
        PyErr_NoMemory();
        return NULL;
    }
    if (PyByteArray_Resize(buffer, start + size) < 0)
        return NULL;
    return (uint8_t *)PyByteArray_AS_STRING(buffer) + start;
}
#endif

#endif
