// SPDX-License-Identifier: BSL-1.0
// The QED on-disk format: constants, the header, and its validation.
//
// Everything here is pure computation on bytes and numbers: no I/O.
// All on-disk integers are little-endian; encode/decode work on any host.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <system_error>

namespace qed {

inline constexpr std::uint32_t magic = 0x00444551;  // "QED\0" little-endian

/// Incompatible feature bits (`features`).
enum feature : std::uint64_t {
    feature_backing_file = 0x01,             ///< image has a backing file
    feature_need_check = 0x02,               ///< image needs a consistency check
    feature_backing_format_no_probe = 0x04,  ///< backing file is raw; never probe
};
inline constexpr std::uint64_t known_features =
    feature_backing_file | feature_need_check | feature_backing_format_no_probe;
inline constexpr std::uint64_t known_compat_features = 0;
inline constexpr std::uint64_t known_autoclear_features = 0;

inline constexpr std::uint32_t min_cluster_size = 4 * 1024;
inline constexpr std::uint32_t max_cluster_size = 64 * 1024 * 1024;
inline constexpr std::uint32_t default_cluster_size = 64 * 1024;
inline constexpr std::uint32_t min_table_size = 1;
inline constexpr std::uint32_t max_table_size = 16;
inline constexpr std::uint32_t default_table_size = 4;
inline constexpr std::uint32_t sector_size = 512;
inline constexpr std::size_t header_struct_size = 64;

/// Largest header area (header_size * cluster_size, in bytes) a header may
/// declare. QEMU refuses more ("QED header size is too large"); the backing
/// name's offset and length are 32-bit fields, so more could never be used.
inline constexpr std::uint64_t max_header_bytes = 0xffff'ffffULL;

/// Longest backing file name read from or written to a header, in bytes.
/// QEMU stops at 4095 (../shared/REFERENCE.md bug 3: names it writes must
/// still open here, so we go much further: 256 times PATH_MAX); the limit
/// bounds the buffer a header can make an open allocate, whatever it claims.
inline constexpr std::uint32_t max_backing_name_size = 1024 * 1024;

/// L2 entry value of a zero cluster (reads as zeros, hides the backing file).
inline constexpr std::uint64_t zero_cluster_entry = 1;

/// Largest image size any header may declare: QEMU's block layer uses signed
/// 64-bit lengths, so we never go above INT64_MAX (rounded down to 512).
inline constexpr std::uint64_t max_addressable_size = 0x7fff'ffff'ffff'fe00ULL;

/// The fixed 64-byte header, in host byte order.
struct header {
    std::uint32_t magic = qed::magic;                   ///< "QED\0" as a little-endian number
    std::uint32_t cluster_size = default_cluster_size;  ///< bytes per cluster, a power of two
    std::uint32_t table_size = default_table_size;      ///< clusters per L1 or L2 table
    std::uint32_t header_size = 1;                      ///< in clusters
    std::uint64_t features = 0;                         ///< feature bits an opener must understand
    std::uint64_t compat_features = 0;                  ///< bits an opener may ignore
    std::uint64_t autoclear_features = 0;               ///< bits a writer that does not know them clears
    std::uint64_t l1_table_offset = 0;                  ///< in bytes
    std::uint64_t image_size = 0;                       ///< guest-visible size, in bytes
    std::uint32_t backing_filename_offset = 0;          ///< bytes from the file start; 0 without a backing file
    std::uint32_t backing_filename_size = 0;            ///< bytes of the name, no terminator

    /// Whether feature bit `f` is set.
    bool has(feature f) const noexcept { return (features & f) != 0; }
    /// Field-by-field equality.
    friend bool operator==(const header&, const header&) = default;
};

/// Serialise to exactly 64 little-endian bytes.
std::array<std::byte, header_struct_size> encode(const header& h) noexcept;
/// Parse 64 little-endian bytes (no validation).
header decode(std::span<const std::byte, header_struct_size> bytes) noexcept;

/// Cluster size valid: power of two in [4 KiB, 64 MiB].
bool is_valid_cluster_size(std::uint64_t cluster_size) noexcept;
/// Table size valid: power of two in [1, 16].
bool is_valid_table_size(std::uint64_t table_size) noexcept;

/// Bytes the L1 table can address for this geometry, computed without
/// 64-bit overflow and capped at max_addressable_size.
std::uint64_t max_image_size(std::uint32_t cluster_size, std::uint32_t table_size) noexcept;

/// Validate a header against the size of the file that holds it.
/// Returns the first problem found, or {} when the header is usable.
/// `detail`, when given, receives a one-line human description of the problem.
std::error_code validate(const header& h, std::uint64_t file_size, std::string* detail = nullptr);

/// Derived addressing constants of a valid header.
struct geometry {
    std::uint32_t cluster_size = 0;   ///< bytes per cluster
    std::uint32_t table_size = 0;     ///< clusters per table
    std::uint32_t cluster_bits = 0;   ///< log2(cluster_size)
    std::uint32_t table_entries = 0;  ///< entries per L1 or L2 table
    std::uint32_t l2_bits = 0;        ///< log2(table_entries)
    std::uint64_t table_bytes = 0;    ///< table_size * cluster_size
    std::uint64_t header_bytes = 0;   ///< header_size * cluster_size

    /// The geometry of `h` (which must be valid).
    explicit geometry(const header& h) noexcept;
    /// All zeros: no image.
    geometry() = default;

    /// Index in the L1 table of the L2 table that maps guest offset `pos`.
    std::uint64_t l1_index(std::uint64_t pos) const noexcept { return pos >> (cluster_bits + l2_bits); }
    /// Index in its L2 table of the entry that maps guest offset `pos`.
    std::uint32_t l2_index(std::uint64_t pos) const noexcept {
        return static_cast<std::uint32_t>((pos >> cluster_bits) & (table_entries - 1));
    }
    /// Offset of `pos` inside its cluster.
    std::uint64_t offset_in_cluster(std::uint64_t pos) const noexcept { return pos & (cluster_size - 1); }
    /// `pos` rounded down to the start of its cluster.
    std::uint64_t start_of_cluster(std::uint64_t pos) const noexcept { return pos & ~std::uint64_t{cluster_size - 1}; }
    /// Round up to a whole cluster (pos must be below 2^64 - cluster_size).
    std::uint64_t round_up(std::uint64_t pos) const noexcept { return start_of_cluster(pos + cluster_size - 1); }
    /// Number of clusters needed to hold `bytes` (a true ceiling division).
    std::uint64_t clusters_for(std::uint64_t bytes) const noexcept {
        return (bytes >> cluster_bits) + ((bytes & (cluster_size - 1)) != 0);
    }
    /// Bytes of guest address space one L2 table covers.
    std::uint64_t l2_span() const noexcept { return std::uint64_t{table_entries} << cluster_bits; }
    /// A data cluster offset is usable: aligned, after the header, inside the file.
    bool valid_cluster_offset(std::uint64_t off, std::uint64_t file_end) const noexcept {
        return offset_in_cluster(off) == 0 && off >= header_bytes && off < file_end;
    }
    /// A table offset is usable: aligned, after the header, and the whole
    /// table (table_size clusters) ends inside the file.
    bool valid_table_offset(std::uint64_t off, std::uint64_t file_end) const noexcept {
        return offset_in_cluster(off) == 0 && off >= header_bytes && off <= file_end && file_end - off >= table_bytes;
    }
};

}  // namespace qed
