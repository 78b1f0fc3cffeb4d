"""kafka-python checksums record batches with the C crc32c, not its pure-Python fallback."""

from __future__ import annotations

import crc32c
from kafka.record import default_records, util
from kafka.record._crc32c import crc as pure_python_crc
from kafka.record.default_records import DefaultRecordBatchBuilder


def test_the_c_implementation_is_the_one_bound():
    # calc_crc32c binds its implementation as a default argument at import time.
    bound = util.calc_crc32c.__defaults__[0]
    assert bound is crc32c.crc32c
    assert bound is not pure_python_crc
    assert default_records.calc_crc32c is util.calc_crc32c


def test_a_built_batch_carries_the_c_checksum():
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 16,
    )
    builder.append(0, timestamp=None, key=b"wl-1", value=b'{"v":1}', headers=[])
    buffer = bytes(builder.build())
    crc_offset = DefaultRecordBatchBuilder.CRC_OFFSET
    stored = int.from_bytes(buffer[crc_offset : crc_offset + 4], "big")
    assert stored == crc32c.crc32c(buffer[DefaultRecordBatchBuilder.ATTRIBUTES_OFFSET :])
    assert stored == pure_python_crc(buffer[DefaultRecordBatchBuilder.ATTRIBUTES_OFFSET :])
