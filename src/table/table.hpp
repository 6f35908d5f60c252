// SPDX-License-Identifier: BSL-1.0
// L1 and L2 tables in memory (host byte order), and their I/O.
//
// A table is table_size clusters of 64-bit little-endian offsets on disk.
// Writes of a table update only the 512-byte sectors (or larger O_DIRECT
// blocks) that hold changed entries.
//
// Ownership: a table owns its entries (one aligned buffer); the L1 table is
// owned by the image's metadata, L2 tables by their l2_entry (shared by the
// cache, the write-back and the requests using them).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>

#include "qed/block_file.hpp"
#include "qed/detail/buffers.hpp"

namespace qed::detail {

/// Memory alignment of every buffer the driver allocates (O_DIRECT-safe).
inline constexpr std::size_t memory_alignment = 4096;

/// Frees what allocate_aligned() returned: from the heap, or (a large zeroed
/// buffer) mapped pages, `mapped` bytes of them.
struct aligned_free {
    std::size_t mapped = 0;
    void operator()(void* p) const noexcept;
};
using aligned_bytes = std::unique_ptr<std::byte[], aligned_free>;

/// `n` bytes aligned to memory_alignment (rounded up); throws std::bad_alloc.
/// A large zeroed buffer (a table of up to 1 GiB) is mapped anonymous
/// memory: its pages cost nothing until written, so a new, mostly empty
/// table takes memory for the entries it holds, not for its size.
aligned_bytes allocate_aligned(std::size_t n, bool zeroed);

/// A read-only buffer of zeros shared by everything that writes zeros.
std::span<const std::byte> zero_block() noexcept;

/// Append `len` bytes of zeros to `out`, as descriptors of zero_block().
void append_zeros(const_buffers& out, std::uint64_t len);

class table {
public:
    explicit table(std::uint32_t entries);

    std::uint32_t size() const noexcept { return entries_; }
    std::uint64_t& operator[](std::size_t i) noexcept { return data()[i]; }
    std::uint64_t operator[](std::size_t i) const noexcept { return data()[i]; }
    std::uint64_t* data() noexcept { return reinterpret_cast<std::uint64_t*>(bytes_.get()); }
    const std::uint64_t* data() const noexcept { return reinterpret_cast<const std::uint64_t*>(bytes_.get()); }
    std::size_t byte_size() const noexcept { return std::size_t{entries_} * sizeof(std::uint64_t); }
    std::byte* raw() noexcept { return bytes_.get(); }

    /// Convert entries just read from disk (little-endian) to host order.
    void from_disk() noexcept;

    /// Hold `entries` (more than now) entries: the first size() keep their
    /// values, the new ones are 0. The table object stays where it is (the
    /// write-back keeps a pointer to it); only its buffer is replaced, so
    /// nothing may hold a pointer into the entries across this call.
    void grow(std::uint32_t entries);

private:
    std::uint32_t entries_;
    aligned_bytes bytes_;
};

/// Read a whole table at `offset` into `t` (then converted to host order).
void async_read_table(block_file& file, std::uint64_t offset, table& t, op_handler handler);

/// The same, reading only where the file holds data: ranges the file has as
/// holes read as zeros without being read, so a huge, mostly empty table (a
/// new table is written as the blocks holding entries plus an extension)
/// costs memory for the blocks it holds, not for its size. `t` must hold
/// zeros.
void async_read_table_sparse(block_file& file, std::uint64_t offset, table& t, op_handler handler);

/// Write entries [first, first + count) of `t`, widened to whole `align`-byte
/// blocks, to the table at `offset`. `t` must not change until completion.
void async_write_table(block_file& file, std::uint64_t offset, const table& t, std::uint32_t first, std::uint32_t count,
                       std::size_t align, op_handler handler);

}  // namespace qed::detail
