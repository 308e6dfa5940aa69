/*
 * libFuzzer harness of the capture readers' pure C core
 * (bridge/capture/_records_core.h): classic pcap record headers read from bytes
 * nobody checked (a capture file), and TPACKET_V3 ring blocks, exactly the code
 * the CPython binding (bridge/capture/_records.c) runs.
 *
 * Input: [options: 1 byte][snaplen: 2 bytes][block offset: 2 bytes][bytes].
 * The bytes are copied into a buffer of exactly their size (AddressSanitizer
 * sees any read beyond it) and read
 *   - as pcap records from offset 0 as pcap_batch() does (byte order, record
 *     header of 16 or 24 bytes, micro- or nanoseconds, a limit from the options);
 *     each record's bytes are copied out of the buffer;
 *   - as a ring holding one TPACKET_V3 block at the block offset (which may lie
 *     outside): measured, then copied into a buffer of exactly the measured size.
 * Invariants are checked with abort(): records within the bytes and in order,
 * the copied frames back to back, within snaplen + 4, their total no more than
 * the ring's bytes and 4 per frame.
 *
 * Build and run (tests/test_native.py does):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *         -I bridge/capture fuzz/fuzz_records.c -o build/fuzz_records
 *   build/fuzz_records -runs=200000 CORPUS_DIR
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_records_core.h"
#include "check.h"

static void read_pcap(const uint8_t *p, ptrdiff_t n, uint8_t options)
{
    int little = options & 1;
    ptrdiff_t record_header = (options & 2) ? 24 : 16;
    long long frac_mult = (options & 4) ? 1 : 1000;
    unsigned long long limit = (options & 8) ? 262144 : 64;
    ptrdiff_t pos = 0, need = record_header;
    long long absurd = -1;
    BatchRecord r;
    int rc;
    while ((rc = next_record(p, n, pos, little, record_header, frac_mult, limit, &r, &need, &absurd)) == RECORD_OK) {
        CHECK((ptrdiff_t)r.offset == pos + record_header);
        CHECK(r.length <= limit && (ptrdiff_t)(r.offset + r.length) <= n);
        uint8_t *copy = malloc(r.length ? r.length : 1);
        CHECK(copy != NULL);
        memcpy(copy, p + r.offset, r.length);
        free(copy);
        pos = (ptrdiff_t)(r.offset + r.length);
    }
    CHECK(need >= record_header);
    CHECK(rc == RECORD_SHORT ? pos + need > n : absurd > (long long)limit);
}

static void read_block(const uint8_t *ring, ptrdiff_t size, ptrdiff_t block, ptrdiff_t snaplen)
{
    ptrdiff_t frames, total;
    if (v3_measure(ring, size, block, snaplen, &frames, &total) != V3_OK)
        return;
    CHECK(frames >= 0 && total >= 0 && total <= size + 4 * frames);
    uint8_t *dst = malloc(total ? (size_t)total : 1);
    BatchRecord *records = malloc((size_t)(frames ? frames : 1) * sizeof(BatchRecord));
    CHECK(dst != NULL && records != NULL);
    v3_fill(ring, size, block, snaplen, frames, dst, records);
    uint64_t offset = 0;
    for (ptrdiff_t i = 0; i < frames; i++) {
        CHECK(records[i].offset == offset && records[i].length <= (uint64_t)snaplen + 4);
        offset += records[i].length;
    }
    CHECK(offset == (uint64_t)total);
    free(records);
    free(dst);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5)
        return 0;
    uint8_t options = data[0];
    ptrdiff_t snaplen = (ptrdiff_t)(data[1] << 8 | data[2]);
    ptrdiff_t n = (ptrdiff_t)size - 5;
    ptrdiff_t block = (ptrdiff_t)(data[3] << 8 | data[4]) % (n + 64) - 32; /* outside too, either side */
    uint8_t *bytes = malloc(n ? (size_t)n : 1); /* exactly the input: reads beyond are caught */
    CHECK(bytes != NULL);
    memcpy(bytes, data + 5, (size_t)n);
    read_pcap(bytes, n, options);
    read_block(bytes, n, block, snaplen);
    free(bytes);
    return 0;
}
