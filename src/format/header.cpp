// SPDX-License-Identifier: BSL-1.0
// Header encoding and validation (pure functions, no I/O).
#include <bit>
#include <cstdio>

#include "qed/error.hpp"
#include "qed/format.hpp"

namespace qed {
namespace {

template <class T>
void put_le(std::byte* p, T v) noexcept {
    for (std::size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}

template <class T>
T get_le(const std::byte* p) noexcept {
    T v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(std::to_integer<T>(p[i])) << (8 * i);
    return v;
}

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

std::error_code fail(errc e, std::string* detail, std::string text) {
    if (detail) *detail = std::move(text);
    return e;
}

}  // namespace

std::array<std::byte, header_struct_size> encode(const header& h) noexcept {
    std::array<std::byte, header_struct_size> b{};
    put_le(&b[0], h.magic);
    put_le(&b[4], h.cluster_size);
    put_le(&b[8], h.table_size);
    put_le(&b[12], h.header_size);
    put_le(&b[16], h.features);
    put_le(&b[24], h.compat_features);
    put_le(&b[32], h.autoclear_features);
    put_le(&b[40], h.l1_table_offset);
    put_le(&b[48], h.image_size);
    put_le(&b[56], h.backing_filename_offset);
    put_le(&b[60], h.backing_filename_size);
    return b;
}

header decode(std::span<const std::byte, header_struct_size> b) noexcept {
    header h;
    h.magic = get_le<std::uint32_t>(&b[0]);
    h.cluster_size = get_le<std::uint32_t>(&b[4]);
    h.table_size = get_le<std::uint32_t>(&b[8]);
    h.header_size = get_le<std::uint32_t>(&b[12]);
    h.features = get_le<std::uint64_t>(&b[16]);
    h.compat_features = get_le<std::uint64_t>(&b[24]);
    h.autoclear_features = get_le<std::uint64_t>(&b[32]);
    h.l1_table_offset = get_le<std::uint64_t>(&b[40]);
    h.image_size = get_le<std::uint64_t>(&b[48]);
    h.backing_filename_offset = get_le<std::uint32_t>(&b[56]);
    h.backing_filename_size = get_le<std::uint32_t>(&b[60]);
    return h;
}

bool is_valid_cluster_size(std::uint64_t cs) noexcept {
    return cs >= min_cluster_size && cs <= max_cluster_size && std::has_single_bit(cs);
}

bool is_valid_table_size(std::uint64_t ts) noexcept {
    return ts >= min_table_size && ts <= max_table_size && std::has_single_bit(ts);
}

std::uint64_t max_image_size(std::uint32_t cluster_size, std::uint32_t table_size) noexcept {
    // entries^2 * cluster_size can reach 2^80 (QEMU's 64-bit product wraps
    // to 0 for cluster_size >= 4 MiB with table_size 4). entries <= 2^27, so
    // entries^2 fits in 64 bits; check the last multiplication before doing it.
    const std::uint64_t entries = std::uint64_t{cluster_size} * table_size / sizeof(std::uint64_t);
    const std::uint64_t entries2 = entries * entries;
    if (cluster_size != 0 && entries2 > max_addressable_size / cluster_size) return max_addressable_size;
    return entries2 * cluster_size;
}

geometry::geometry(const header& h) noexcept
    : cluster_size(h.cluster_size),
      table_size(h.table_size),
      cluster_bits(static_cast<std::uint32_t>(std::countr_zero(h.cluster_size))),
      table_entries(static_cast<std::uint32_t>(std::uint64_t{h.cluster_size} * h.table_size / sizeof(std::uint64_t))),
      l2_bits(static_cast<std::uint32_t>(std::countr_zero(table_entries))),
      table_bytes(std::uint64_t{h.cluster_size} * h.table_size),
      header_bytes(std::uint64_t{h.cluster_size} * h.header_size) {}

std::error_code validate(const header& h, std::uint64_t file_size, std::string* detail) {
    if (file_size < header_struct_size)
        return fail(errc::file_too_small, detail,
                    "file is " + std::to_string(file_size) + " bytes, too small for the 64-byte QED header");
    if (h.magic != magic)
        return fail(errc::bad_magic, detail, "bad magic " + hex(h.magic) + " (expected 0x444551, \"QED\\0\")");
    if (const std::uint64_t unknown = h.features & ~known_features)
        return fail(errc::unknown_features, detail,
                    "unsupported QED feature bits " + hex(unknown) + " (features " + hex(h.features) +
                        "; this library knows 0x1 backing_file, 0x2 need_check, 0x4 backing_format_no_probe)");
    if (!is_valid_cluster_size(h.cluster_size))
        return fail(errc::invalid_cluster_size, detail,
                    "cluster_size " + std::to_string(h.cluster_size) + " is not a power of two in [4096, 67108864]");
    if (!is_valid_table_size(h.table_size))
        return fail(errc::invalid_table_size, detail,
                    "table_size " + std::to_string(h.table_size) + " is not a power of two in [1, 16]");
    const geometry g(h);
    // header_size is 32 bits and cluster_size at most 2^26, so the product
    // fits in 64 bits; it must still lie inside the file.
    // qemu tests the L1 offset against the header area first, so a header
    // area that also covers the L1 table reads "QED table offset is
    // invalid" there; the tools match either line.
    if (g.header_bytes > max_header_bytes && h.l1_table_offset < g.header_bytes)
        return fail(errc::invalid_header_size, detail,
                    "QED table offset is invalid: header_size " + std::to_string(h.header_size) + " clusters (" +
                        std::to_string(g.header_bytes) + " bytes) covers the L1 table at " +
                        std::to_string(h.l1_table_offset) + " (the limit is " + std::to_string(max_header_bytes) + ")");
    if (g.header_bytes > max_header_bytes)
        return fail(errc::invalid_header_size, detail,
                    "QED header size is too large: header_size " + std::to_string(h.header_size) + " clusters (" +
                        std::to_string(g.header_bytes) + " bytes; the limit is " + std::to_string(max_header_bytes) +
                        ")");
    if (h.header_size == 0 || g.header_bytes > file_size)
        return fail(errc::invalid_header_size, detail,
                    "header_size " + std::to_string(h.header_size) + " clusters (" + std::to_string(g.header_bytes) +
                        " bytes) does not fit in the " + std::to_string(file_size) + "-byte file");
    if (h.image_size % sector_size != 0)
        return fail(errc::image_size_unaligned, detail,
                    "image_size " + std::to_string(h.image_size) + " is not a multiple of 512");
    const std::uint64_t max = max_image_size(h.cluster_size, h.table_size);
    if (h.image_size > max)
        return fail(errc::image_too_large, detail,
                    "image_size " + std::to_string(h.image_size) + " exceeds the maximum " + std::to_string(max) +
                        " for cluster_size " + std::to_string(h.cluster_size) + " and table_size " +
                        std::to_string(h.table_size));
    if (g.offset_in_cluster(h.l1_table_offset) != 0 || h.l1_table_offset < g.header_bytes)
        return fail(errc::invalid_l1_offset, detail,
                    "l1_table_offset " + hex(h.l1_table_offset) +
                        " is misaligned or inside the header (header ends at " + hex(g.header_bytes) + ")");
    const std::uint64_t file_end = g.start_of_cluster(file_size);
    if (!g.valid_table_offset(h.l1_table_offset, file_end))
        return fail(errc::l1_table_past_eof, detail,
                    "L1 table at " + hex(h.l1_table_offset) + " (" + std::to_string(g.table_bytes) +
                        " bytes) runs past the end of the file (" + std::to_string(file_size) + " bytes)");
    if (h.has(feature_backing_file)) {
        const std::uint64_t end = std::uint64_t{h.backing_filename_offset} + h.backing_filename_size;
        if (end > g.header_bytes)
            return fail(errc::backing_name_out_of_range, detail,
                        "backing file name at " + std::to_string(h.backing_filename_offset) + "+" +
                            std::to_string(h.backing_filename_size) + " lies outside the header clusters (" +
                            std::to_string(g.header_bytes) + " bytes)");
        if (h.backing_filename_size > max_backing_name_size)
            return fail(errc::backing_name_too_long, detail,
                        "backing file name length " + std::to_string(h.backing_filename_size) +
                            " bytes exceeds the limit of " + std::to_string(max_backing_name_size));
    }
    return {};
}

}  // namespace qed
