"""The on-disk constants of dcformat, mirroring spec/format.md (section numbers in comments)."""

from __future__ import annotations

# §2 File layout
MAGIC = b"\x89DCF\r\n\x1a\n"
VERSION_MAJOR = 1
VERSION_MINOR = 0
PREAMBLE_SIZE = 32  # magic(8) + major(2) + minor(2) + header_crc32(4) + header_length(8) + file_length(8)
PREAMBLE_FORMAT = "<8sHHIQQ"
ALIGNMENT = 64  # §4: every section starts on a multiple of this
HEADER_PAD_BYTE = b" "  # §2: the JSON text is padded with spaces

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
}
FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})

# §5 Encodings
RAW = "raw"
SHARED = "shared"
SPARSE = "sparse"
ENCODINGS = (RAW, SHARED, SPARSE)
CSR = "csr"
CSC = "csc"
LAYOUTS = (CSR, CSC)
MIN_BITS, MAX_BITS = 1, 16  # §5.2, §5.3: `bits` and `index_bits`

# Keys of each tensor object, by encoding (§3.1, §5)
TENSOR_COMMON_KEYS = frozenset({"name", "dtype", "shape", "encoding"})
RAW_KEYS = frozenset({"data"})
SHARED_KEYS = frozenset({"bits", "codebook", "indices"})
SPARSE_COMMON_KEYS = frozenset({"layout", "index_bits", "entries", "fillers", "gaps"})
SPARSE_CODEBOOK_KEYS = SPARSE_COMMON_KEYS | {"bits", "codebook", "indices"}
SPARSE_VALUES_KEYS = SPARSE_COMMON_KEYS | {"values"}

# §6 Streams
FIXED = "fixed"
HUFFMAN = "huffman"
CODINGS = (FIXED, HUFFMAN)
FIXED_STREAM_KEYS = frozenset({"coding", "section"})
HUFFMAN_STREAM_KEYS = frozenset({"coding", "section", "table", "block_size", "block_bytes"})
MAX_CODE_LENGTH = 15  # §6.2
MAX_ALPHABET = 1 << 16  # §6.2, §7
DEFAULT_BLOCK_SIZE = 1 << 16  # symbols per Huffman block written by this implementation (§6.3)

# §7 Default limits of this implementation
DEFAULT_MAX_HEADER_BYTES = 100_000_000
DEFAULT_MAX_TENSORS = 1_000_000
DEFAULT_MAX_RANK = 32
DEFAULT_MIN_DECODED_BYTES = 1 << 30
DEFAULT_MAX_EXPANSION = 10_000
