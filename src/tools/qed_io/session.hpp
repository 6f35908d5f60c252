// SPDX-License-Identifier: BSL-1.0
// One qed-io run: the open image, requests in flight (aio_*), byte-granular
// I/O on top of the library's 512-byte requests, and the output lines
// qemu-io prints.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/driver.hpp"

namespace qed::tools::io {

/// Completion of a byte-granular operation.
using done_fn = std::function<void(std::error_code)>;

class session {
public:
    explicit session(driver& d) : driver_(d) {}

    driver& loop() noexcept { return driver_; }
    image& img() noexcept { return img_; }
    bool is_open() const noexcept { return img_.is_open(); }
    const std::string& path() const noexcept { return path_; }

    /// Open `path`; prints one line and returns false on failure.
    /// With `by_options` set (named in open -o or by --image-opts), the line says "can't open:"
    /// as qemu-io's does, else "can't open device".
    bool open(const std::string& path, open_options options, bool by_options = false);
    /// Snapshot mode (-s): `path` is only read; writes go to a temporary
    /// QED overlay on it, removed when qed-io ends (it is unlinked as soon
    /// as it is open, so nothing is left behind even after a crash).
    bool open_snapshot(const std::string& path, open_options options);
    /// Wait for requests in flight, then close. False when closing failed.
    bool close();

    // ---- requests at any byte offset ------------------------------------
    // Ranges must lie inside the image; unaligned heads and tails go through
    // a read-modify-write of the sectors they touch.
    void read(std::uint64_t offset, std::uint64_t length, std::byte* out, done_fn done);
    void write(std::uint64_t offset, std::uint64_t length, const std::byte* in, bool fua, done_fn done);
    void write_zeroes(std::uint64_t offset, std::uint64_t length, bool fua, done_fn done);

    /// Run the loop until `done` is called; returns its error.
    std::error_code wait(const std::function<void(done_fn)>& start);

    // ---- asynchronous commands -------------------------------------------
    void aio_started() { ++in_flight_; }
    void aio_finished() { --in_flight_; }
    /// Run the loop until no aio request is in flight.
    void drain();

    /// Remember that a command failed (the exit status becomes 1).
    void mark_failed() { failed_ = true; }
    bool failed() const noexcept { return failed_; }
    bool quit_requested = false;

private:
    driver& driver_;
    image img_;
    std::string path_;
    unsigned in_flight_ = 0;
    bool probed_raw_ = false;  ///< raw by probing: block 0 may not become another format
    bool failed_ = false;
};

// ---- output in qemu-io's formats -----------------------------------------

/// "read 512/512 bytes at offset 0" and, unless quiet, the timing line.
void print_transfer(const char* verb, std::uint64_t offset, std::uint64_t count, bool quiet,
                    std::chrono::steady_clock::duration elapsed);
/// Hex and ASCII dump of `n` bytes that start at image offset `offset`.
void dump_buffer(const std::byte* p, std::uint64_t offset, std::uint64_t n);
/// The message qemu-io gives for a failed request.
std::string error_text(std::error_code ec);

}  // namespace qed::tools::io
