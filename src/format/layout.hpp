// SPDX-License-Identifier: BSL-1.0
// Where things may lie in a QED file, as pure functions of the header:
// which offsets a table entry may hold, how many L1 entries an image of a
// given size uses, where a backing file name goes, and the header's first
// block. No I/O; the layers above ask these questions of their state.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include "qed/format.hpp"

namespace qed::detail {

/// The offsets table entries may point at, for one header and one end of the
/// used part of the file (`file_end`, cluster aligned).
struct layout {
    geometry geo;
    std::uint64_t l1_offset = 0;
    std::uint64_t file_end = 0;

    /// [off, off + len) overlaps the L1 table.
    bool inside_l1(std::uint64_t off, std::uint64_t len) const noexcept {
        return off < l1_offset + geo.table_bytes && l1_offset < off + len;
    }
    /// A data cluster offset is usable: aligned, after the header, inside the
    /// file, and not inside the L1 table (a guest write there would overwrite
    /// metadata).
    bool valid_data_offset(std::uint64_t off) const noexcept {
        return geo.valid_cluster_offset(off, file_end) && !inside_l1(off, geo.cluster_size);
    }
    /// An L2 table offset is usable: the whole table inside the file, clear of
    /// the header and of the L1 table.
    bool valid_l2_offset(std::uint64_t off) const noexcept {
        return geo.valid_table_offset(off, file_end) && !inside_l1(off, geo.table_bytes);
    }
};

/// How many L1 entries an image of `size` bytes looks up: those covering it,
/// rounded up to whole `block`-byte write blocks (at least one block), never
/// more than the table holds.
inline std::uint32_t l1_entries_for(const geometry& g, std::uint64_t size, std::size_t block) noexcept {
    const std::uint64_t span = g.l2_span();
    std::uint64_t n = std::max<std::uint64_t>(size / span + (size % span != 0), 1);
    const std::uint64_t per_block = block / sizeof(std::uint64_t);
    n = (n + per_block - 1) / per_block * per_block;
    return static_cast<std::uint32_t>(std::min<std::uint64_t>(n, g.table_entries));
}

/// Bytes of [pos, pos + len) that a backing file of `backing_size` bytes
/// holds (the rest, past its end, reads as zeros).
inline std::uint64_t bytes_in_backing(std::uint64_t pos, std::uint64_t len, std::uint64_t backing_size) noexcept {
    return pos >= backing_size ? 0 : std::min(len, backing_size - pos);
}

/// Table entries between host and disk order (little-endian on disk): a
/// no-op on little-endian hosts. `out` may be `in`.
inline void convert_entries(const std::uint64_t* in, std::uint64_t* out, std::size_t n) noexcept {
    if constexpr (std::endian::native == std::endian::big) {
        for (std::size_t i = 0; i < n; ++i) out[i] = __builtin_bswap64(in[i]);
    } else if (in != out) {
        std::memcpy(out, in, n * sizeof(std::uint64_t));
    }
}

/// Fill the header's first block (`block.size()` bytes): the 64-byte header
/// `h` over what `block` holds, and the backing file name right after it when
/// `h` puts it there (as QEMU does for names that fit in the block).
inline void encode_first_block(std::span<std::byte> block, const header& h, std::string_view name) noexcept {
    const auto bytes = encode(h);
    std::memcpy(block.data(), bytes.data(), bytes.size());
    if (!name.empty() && (h.features & feature_backing_file) && h.backing_filename_offset == header_struct_size &&
        header_struct_size + name.size() <= block.size())
        std::memcpy(block.data() + header_struct_size, name.data(), name.size());
}

/// Where a new backing file name of `name_size` bytes goes when the header
/// `old` is switched to it with one write of the first `block` bytes:
///   - header_struct_size: right after the header, inside the first block
///     (the switch writes name and header together);
///   - an offset >= `block`: a name too long for the first block goes, whole,
///     to blocks clear of the old name (written and flushed first, then the
///     first block points at it), the first of these that fits: the end of
///     the header area, right after the old name, the second block;
///   - 0: no such place (the name is too long to switch to safely).
/// `header_bytes` is the header area's size (header_size clusters).
inline std::uint64_t place_backing_name(const header& old, std::size_t name_size, std::size_t block,
                                        std::uint64_t header_bytes) noexcept {
    if (header_struct_size + name_size > header_bytes) return 0;
    if (header_struct_size + name_size <= block) return header_struct_size;
    const bool had = (old.features & feature_backing_file) != 0;
    const std::uint64_t old_start = had ? old.backing_filename_offset : 0;
    const std::uint64_t old_end = had ? old_start + old.backing_filename_size : 0;
    const std::uint64_t len = (name_size + block - 1) / block * block;  // written in whole blocks
    const std::uint64_t candidates[] = {header_bytes >= len ? header_bytes - len : 0,
                                        (old_end + block - 1) / block * block, block};
    for (const std::uint64_t at : candidates) {
        const bool clear_of_old = !had || at + len <= old_start || at >= old_end;
        if (at >= block && at + name_size <= header_bytes && clear_of_old) return at;
    }
    return 0;
}

}  // namespace qed::detail
