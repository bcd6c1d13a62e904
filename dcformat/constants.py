"""The on-disk constants of dcformat, mirroring spec/format.md (section numbers in comments)."""

from __future__ import annotations

# §2 File layout
MAGIC = b"\x89DCF\r\n\x1a\n"
VERSION_MAJOR = 1
VERSION_MINOR = 4  # the newest minor version this implementation reads and writes (§2.3, §9)
JSON_HEADER_MINOR = 0  # §2.3: files with a JSON header are written as 1.0, readable by every 1.x reader
ZLIB_HEADER_MINOR = 1  # §2.2: a zlib-compressed header needs version 1.1 or later
FIELDS_MINOR = 2  # §5.4, §3.2: the fields encoding and the float8 dtypes need version 1.2 or later
ROW_SCALES_MINOR = 3  # §5.2: a shared tensor with row scales needs version 1.3 or later
RANS_MINOR = 4  # §6.4: a stream coded with rANS needs version 1.4 or later
PREAMBLE_SIZE = 32  # magic(8) + major(2) + minor(2) + header_crc32(4) + header_length(8) + file_length(8)
PREAMBLE_FORMAT = "<8sHHIQQ"
ALIGNMENT = 64  # §4: every section starts on a multiple of this
HEADER_PAD_BYTE = b" "  # §2: the JSON text (or zlib stream) is padded with spaces
JSON_WHITESPACE = b" \t\n\r"  # §2.2: RFC 8259 whitespace, which may surround the JSON text
ZLIB_HEADER_CMF = 0x78  # §2.2: the first byte of a compressed header (deflate, 32 KiB window)
ZLIB_FDICT = 0x20  # §2.2: the FLG bit of a preset dictionary, which a compressed header must not use
ZLIB_LEVEL = 9  # the compression level dcformat writes headers with (informative, §3.5)
HEADER_JSON = "json"  # how a header region holds its JSON text (§2.2): as is ...
HEADER_ZLIB = "zlib"  # ... or as a zlib stream

# §3 Header keys
TOP_LEVEL_KEYS = frozenset({"metadata", "tables", "tensors"})
SECTION_KEYS = frozenset({"offset", "length", "crc32"})
MAX_NAME_BYTES = 65_535  # §3.1

# §3.2 Dtypes: name -> itemsize
DTYPE_SIZES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "bool": 1,
    "float8_e4m3fn": 1, "float8_e5m2": 1,  # since 1.2
}
FLOAT8_DTYPES = frozenset({"float8_e4m3fn", "float8_e5m2"})  # §3.2, format 1.2
FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})  # the dtypes lossy policies code

# §5 Encodings
RAW = "raw"
SHARED = "shared"
SPARSE = "sparse"
FIELDS = "fields"  # §5.4, format 1.2
ENCODINGS = (RAW, SHARED, SPARSE, FIELDS)
CSR = "csr"
CSC = "csc"
LAYOUTS = (CSR, CSC)
MIN_BITS, MAX_BITS = 1, 16  # §5.2, §5.3: `bits` and `index_bits`

# Keys of each tensor object, by encoding (§3.1, §5)
TENSOR_COMMON_KEYS = frozenset({"name", "dtype", "shape", "encoding"})
RAW_KEYS = frozenset({"data"})
SHARED_KEYS = frozenset({"bits", "codebook", "indices"})
ROW_SCALE_KEYS = frozenset({"scale_bits", "scales", "row_scales"})  # §5.2, format 1.3: all or none
ROW_SCALE_DTYPES = frozenset({"float32", "float64"})  # §5.2: the dtypes a shared tensor may scale by row
SPARSE_COMMON_KEYS = frozenset({"layout", "index_bits", "entries", "fillers", "gaps"})
SPARSE_CODEBOOK_KEYS = SPARSE_COMMON_KEYS | {"bits", "codebook", "indices"}
SPARSE_VALUES_KEYS = SPARSE_COMMON_KEYS | {"values"}
FIELDS_KEYS = frozenset({"fields", "chunk_size", "chunks"})
# §4, §5: the keys that may hold a section or a stream, in file order (no encoding has both gaps and scales)
SECTION_KEYS_IN_ORDER = ("data", "codebook", "scales", "row_scales", "gaps", "indices", "values")

# §6 Streams
FIXED = "fixed"
HUFFMAN = "huffman"
RANS = "rans"
CODINGS = (FIXED, HUFFMAN, RANS)
FIXED_STREAM_KEYS = frozenset({"coding", "section"})
HUFFMAN_STREAM_KEYS = frozenset({"coding", "section", "table", "block_size", "block_bytes"})
RANS_STREAM_KEYS = frozenset({"coding", "section", "frequencies", "block_size", "block_bytes"})
RANS_PRECISION = 15  # §6.4: the frequencies of a rANS table add up to 2^15
RANS_TOTAL = 1 << RANS_PRECISION
RANS_STATE_BYTES = 8  # §6.4: a rANS block starts with its u64 state, then u32 words
RANS_WORD_BYTES = 4
RANS_DECODE_TABLE_BYTES = 10 << 15  # §7: a reader's decoding table of one rANS table (2^15 slots x 10 bytes)
MAX_CODE_LENGTH = 15  # §6.2
MAX_ALPHABET = 1 << 16  # §6.2, §7
DEFAULT_BLOCK_SIZE = 1 << 16  # symbols per Huffman block written by this implementation (§6.3)
# Header bytes a Huffman stream object adds beyond a fixed one (coding name, "table", "block_size",
# "block_bytes" keys; §6.2 "Choosing lengths"): the writer's estimate, for a JSON and a zlib header.
HUFFMAN_JSON_COST = 45
HUFFMAN_ZLIB_COST = 15

# §7 Default limits of this implementation
DEFAULT_MAX_HEADER_BYTES = 100_000_000  # the stored header and, for a zlib header, its decompressed JSON (§7)
DEFAULT_MAX_TENSORS = 1_000_000
# JSON structure ('[', '{', ',' and ':' outside strings) a header may hold: parsing costs ~70 B of
# memory per value, so this bounds json.loads to a few hundred MB whatever the header bytes say (§7)
DEFAULT_MAX_HEADER_VALUES = 1 << 23
DEFAULT_MAX_RANK = 32
DEFAULT_MIN_DECODED_BYTES = 1 << 30
DEFAULT_MAX_EXPANSION = 10_000
