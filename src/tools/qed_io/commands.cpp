// SPDX-License-Identifier: BSL-1.0
#include "qed_io/commands.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>

#include "common/cli.hpp"
#include "common/driver.hpp"
#include "common/jobs.hpp"
#include "common/sizes.hpp"
#include "qed/blkdebug.hpp"
#include "qed/node_options.hpp"

namespace qed::tools::io {
namespace {

using argv_t = std::vector<std::string>;
using clock = std::chrono::steady_clock;

/// Largest single request (qemu-io's limit is about the same).
constexpr std::uint64_t max_request = std::uint64_t{1} << 31;

struct command {
    std::string_view name;
    std::string_view alias;
    int min_args;  ///< words after the name, options included
    int max_args;  ///< -1: no limit
    bool needs_image;
    bool writes;
    std::string_view args;
    std::string_view oneline;
    std::string_view help;
    bool (*run)(session&, const argv_t&);
};

extern const command commands[];
extern const std::size_t command_count;

const command* find(std::string_view name) {
    for (std::size_t i = 0; i < command_count; ++i)
        if (commands[i].name == name || (!commands[i].alias.empty() && commands[i].alias == name)) return &commands[i];
    return nullptr;
}

void usage(const command& c) {
    std::printf("%.*s %.*s -- %.*s\n", static_cast<int>(c.name.size()), c.name.data(), static_cast<int>(c.args.size()),
                c.args.data(), static_cast<int>(c.oneline.size()), c.oneline.data());
}

bool usage_of(std::string_view name) {
    if (const command* c = find(name)) usage(*c);
    return false;
}

/// Options of a command, or nullopt after printing qemu-io's complaint.
std::optional<parsed_args> options(const argv_t& argv, const std::vector<option_spec>& spec) {
    std::string error;
    auto r = parse_args(argv_t(argv.begin() + 1, argv.end()), spec, error);
    if (!r) {
        std::printf("%s: %s\n", argv[0].c_str(), error.c_str());
        usage_of(argv[0]);
    }
    return r;
}

std::optional<std::uint64_t> number(const std::string& text) {
    std::string why;
    auto v = parse_size(text, why);
    if (!v) {
        if (why.find("too large") != std::string::npos)
            std::printf("Parsing error: argument too large -- %s\n", text.c_str());
        else
            std::printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n", text.c_str());
    }
    return v;
}

std::optional<int> pattern_byte(const std::string& text) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text.c_str(), &end, 0);
    if (text.empty() || *end || errno || v < 0 || v > 0xff) {
        std::printf("%s is not a valid pattern byte\n", text.c_str());
        return std::nullopt;
    }
    return static_cast<int>(v);
}

/// Offset and the sum of one or more lengths.
struct range {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
};

std::optional<range> parse_range(const parsed_args& a) {
    range r;
    auto off = number(a.positional[0]);
    if (!off) return std::nullopt;
    r.offset = *off;
    for (std::size_t i = 1; i < a.positional.size(); ++i) {
        auto len = number(a.positional[i]);
        if (!len) return std::nullopt;
        r.length += *len;
    }
    if (r.length > max_request) {
        std::printf("length %" PRIu64 " is too large (the maximum is %" PRIu64 ")\n", r.length, max_request);
        return std::nullopt;
    }
    return r;
}

// ---- read ------------------------------------------------------------------

struct read_request {
    range where;
    std::optional<int> pattern;
    std::uint64_t pattern_offset = 0;
    std::optional<std::uint64_t> pattern_length;
    bool quiet = false;
    bool dump = false;
    bool copy_on_read = false;  ///< -C: what the backing chain supplied is written into the image
};

/// After a read: verify, dump, report. Returns false on a failed check.
bool finish_read(session& s, const char* verb, const read_request& r, const std::byte* data, std::error_code ec,
                 clock::duration elapsed) {
    if (ec) {
        std::printf("%s failed: %s\n", verb, error_text(ec).c_str());
        s.mark_failed();
        return false;
    }
    bool ok = true;
    if (r.pattern) {
        const std::uint64_t n = r.pattern_length.value_or(r.where.length - r.pattern_offset);
        for (std::uint64_t i = 0; i < n; ++i) {
            if (std::to_integer<int>(data[r.pattern_offset + i]) != *r.pattern) {
                std::printf("Pattern verification failed at offset %" PRIu64 ", %" PRIu64 " bytes\n",
                            r.where.offset + r.pattern_offset, n);
                ok = false;
                s.mark_failed();
                break;
            }
        }
    }
    if (r.dump) dump_buffer(data, r.where.offset, r.where.length);
    print_transfer("read", r.where.offset, r.where.length, r.quiet, elapsed);
    return ok;
}

std::optional<read_request> parse_read(const argv_t& argv, bool vectored) {
    auto a = options(argv, vectored ? std::vector<option_spec>{{'P', "", true},
                                                               {'q', "", false},
                                                               {'v', "", false},
                                                               {'i', "", false},
                                                               {'C', "", false}}
                                    : std::vector<option_spec>{{'C', "", false},
                                                               {'P', "", true},
                                                               {'s', "", true},
                                                               {'l', "", true},
                                                               {'q', "", false},
                                                               {'v', "", false},
                                                               {'p', "", false},
                                                               {'b', "", false}});
    if (!a) return std::nullopt;
    if (a->has("b")) {
        std::printf("%s failed: the VM state is not supported by QED or raw images\n", argv[0].c_str());
        return std::nullopt;
    }
    if (a->positional.size() < 2 || (!vectored && a->positional.size() != 2) ||
        ((a->has("s") || a->has("l")) && !a->has("P"))) {
        usage_of(argv[0]);
        return std::nullopt;
    }
    read_request r;
    r.copy_on_read = a->has("C");
    r.quiet = a->has("q");
    r.dump = a->has("v");
    if (auto p = a->last("P")) {
        r.pattern = pattern_byte(*p);
        if (!r.pattern) return std::nullopt;
    }
    if (auto so = a->last("s")) {
        auto v = number(*so);
        if (!v) return std::nullopt;
        r.pattern_offset = *v;
    }
    if (auto l = a->last("l")) {
        auto v = number(*l);
        if (!v) return std::nullopt;
        r.pattern_length = *v;
    }
    auto where = parse_range(*a);
    if (!where) return std::nullopt;
    r.where = *where;
    const std::uint64_t plen = r.pattern_length.value_or(0);
    if (r.pattern_offset > r.where.length || plen > r.where.length - r.pattern_offset) {
        std::printf("pattern verification range exceeds end of read data\n");
        return std::nullopt;
    }
    return r;
}

/// Copy-on-read (read -C): the parts of `where` the image does not hold
/// itself, just read through the chain into `data`, are written into it.
std::error_code copy_up(session& s, const range& where, const std::byte* data) {
    if (where.length == 0 || !s.img().backing()) return {};
    if (s.img().info().read_only) return make_error_code(errc::read_only);
    std::vector<extent> ext;
    if (auto ec = block_status(s.loop(), s.img(), where.offset, where.length, ext)) return ec;
    for (const auto& e : ext) {
        if (e.depth == 0 || !e.present) continue;
        const std::byte* from = data + (e.offset - where.offset);
        if (auto ec = s.wait([&](done_fn done) { s.write(e.offset, e.length, from, false, done); })) return ec;
    }
    return {};
}

bool do_read(session& s, const argv_t& argv, bool vectored) {
    auto r = parse_read(argv, vectored);
    if (!r) return false;
    aligned_buffer buf(static_cast<std::size_t>(r->where.length));
    const auto t0 = clock::now();
    auto ec = s.wait([&](done_fn done) { s.read(r->where.offset, r->where.length, buf.data(), done); });
    if (!ec && r->copy_on_read) ec = copy_up(s, r->where, buf.data());
    return finish_read(s, vectored ? "readv" : "read", *r, buf.data(), ec, clock::now() - t0);
}

bool cmd_read(session& s, const argv_t& argv) {
    return do_read(s, argv, false);
}
bool cmd_readv(session& s, const argv_t& argv) {
    return do_read(s, argv, true);
}

bool cmd_aio_read(session& s, const argv_t& argv) {
    auto r = parse_read(argv, true);
    if (!r) return false;
    if (r->copy_on_read) {
        std::printf("aio_read: -C is not supported here (use read -C or readv -C)\n");
        return false;
    }
    auto buf = std::make_shared<aligned_buffer>(static_cast<std::size_t>(r->where.length));
    const auto t0 = clock::now();
    s.aio_started();
    s.read(r->where.offset, r->where.length, buf->data(), [&s, req = *r, buf, t0](std::error_code ec) {
        s.aio_finished();
        finish_read(s, "readv", req, buf->data(), ec, clock::now() - t0);  // qemu-io's word for it
    });
    return true;
}

// ---- write -----------------------------------------------------------------

struct write_request {
    range where;
    int pattern = 0xcd;
    std::string pattern_file;  ///< -s: the buffer is filled from this file, repeated as needed
    bool zero = false;
    bool fua = false;
    bool quiet = false;
};

std::optional<write_request> parse_write(const argv_t& argv, bool vectored, bool aio) {
    std::vector<option_spec> spec{{'P', "", true}, {'q', "", false}, {'f', "", false}};
    if (!vectored || aio) spec.insert(spec.end(), {{'z', "", false}, {'u', "", false}});
    if (!vectored)
        spec.insert(spec.end(),
                    {{'n', "", false}, {'c', "", false}, {'b', "", false}, {'p', "", false}, {'s', "", true}});
    if (aio) spec.push_back({'i', "", false});
    auto a = options(argv, spec);
    if (!a) return std::nullopt;
    if (a->has("c") || a->has("b")) {
        std::printf("%s failed: %s\n", argv[0].c_str(),
                    a->has("c") ? "compressed writes are not supported by QED or raw images"
                                : "the VM state is not supported by QED or raw images");
        return std::nullopt;
    }
    write_request w;
    w.zero = a->has("z");
    w.fua = a->has("f");
    w.quiet = a->has("q");
    if (auto f = a->last("s")) w.pattern_file = *f;
    if ((w.zero ? 1 : 0) + (a->has("P") ? 1 : 0) + (a->has("s") ? 1 : 0) > 1) {
        std::printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return std::nullopt;
    }
    if (!w.zero && (a->has("u") || a->has("n"))) {
        std::printf("-%s requires -z to be specified\n", a->has("u") ? "u" : "n");
        return std::nullopt;
    }
    if (a->positional.size() < 2 || (!vectored && a->positional.size() != 2)) {
        usage_of(argv[0]);
        return std::nullopt;
    }
    if (auto p = a->last("P")) {
        auto v = pattern_byte(*p);
        if (!v) return std::nullopt;
        w.pattern = *v;
    }
    auto where = parse_range(*a);
    if (!where) return std::nullopt;
    w.where = *where;
    return w;
}

/// Fill `buf` from the start of `file`, repeating it if it is shorter.
/// False after printing why it could not be read.
bool fill_from_file(aligned_buffer& buf, const std::string& file) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    std::size_t have = 0;
    int err = 0;
    if (fd < 0) err = errno;
    while (fd >= 0 && have < buf.size()) {
        const ssize_t n = ::read(fd, buf.data() + have, buf.size() - have);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) err = errno;
        if (n <= 0) break;
        have += static_cast<std::size_t>(n);
    }
    if (fd >= 0) ::close(fd);
    if (err || (have == 0 && buf.size() > 0)) {
        std::printf("%s: %s\n", file.c_str(), err ? std::strerror(err) : "the file is empty");
        return false;
    }
    for (std::size_t at = have; at < buf.size(); at += have)
        std::memcpy(buf.data() + at, buf.data(), std::min(have, buf.size() - at));
    return true;
}

void start_write(session& s, const write_request& w, std::shared_ptr<aligned_buffer> buf, done_fn done) {
    if (w.zero) return s.write_zeroes(w.where.offset, w.where.length, w.fua, std::move(done));
    // -s filled it before the clock started
    if (w.pattern_file.empty()) std::memset(buf->data(), w.pattern, buf->size());
    s.write(w.where.offset, w.where.length, buf->data(), w.fua, [buf, done](std::error_code ec) { done(ec); });
}

bool finish_write(session& s, const char* verb, const write_request& w, std::error_code ec, clock::duration elapsed) {
    if (ec) {
        std::printf("%s failed: %s\n", verb, error_text(ec).c_str());
        s.mark_failed();
        return false;
    }
    print_transfer("wrote", w.where.offset, w.where.length, w.quiet, elapsed);
    return true;
}

bool do_write(session& s, const argv_t& argv, bool vectored) {
    auto w = parse_write(argv, vectored, false);
    if (!w) return false;
    auto buf = std::make_shared<aligned_buffer>(w->zero ? 0 : static_cast<std::size_t>(w->where.length));
    if (!w->pattern_file.empty() && !fill_from_file(*buf, w->pattern_file)) return false;
    const auto t0 = clock::now();
    const auto ec = s.wait([&](done_fn done) { start_write(s, *w, buf, done); });
    return finish_write(s, vectored ? "writev" : "write", *w, ec, clock::now() - t0);
}

bool cmd_write(session& s, const argv_t& argv) {
    return do_write(s, argv, false);
}
bool cmd_writev(session& s, const argv_t& argv) {
    return do_write(s, argv, true);
}

bool cmd_aio_write(session& s, const argv_t& argv) {
    auto w = parse_write(argv, true, true);
    if (!w) return false;
    auto buf = std::make_shared<aligned_buffer>(w->zero ? 0 : static_cast<std::size_t>(w->where.length));
    const auto t0 = clock::now();
    s.aio_started();
    start_write(s, *w, buf, [&s, req = *w, t0](std::error_code ec) {
        s.aio_finished();
        finish_write(s, "aio_write", req, ec, clock::now() - t0);
    });
    return true;
}

bool cmd_discard(session& s, const argv_t& argv) {
    auto a = options(argv, {{'q', "", false}, {'C', "", false}});
    if (!a) return false;
    if (a->positional.size() != 2) return usage_of(argv[0]);
    auto r = parse_range(*a);
    if (!r) return false;
    const auto t0 = clock::now();
    std::error_code ec;
    if (r->offset > s.img().size() || r->length > s.img().size() - r->offset) {
        ec = make_error_code(errc::out_of_range);
    } else {
        // The library discards 512-byte sectors; like QEMU's block layer,
        // the unaligned head and tail of the range are left alone. QED gives
        // whole clusters' space back (they read as zeros); raw punches.
        const std::uint64_t first = (r->offset + sector_size - 1) / sector_size * sector_size;
        const std::uint64_t last = (r->offset + r->length) / sector_size * sector_size;
        if (first < last)
            ec = s.wait([&](done_fn done) { s.img().async_discard(first, last - first, std::move(done)); });
    }
    if (ec) {
        std::printf("discard failed: %s\n", error_text(ec).c_str());
        return false;
    }
    print_transfer("discard", r->offset, r->length, a->has("q"), clock::now() - t0);
    return true;
}

// ---- the rest ----------------------------------------------------------------

bool cmd_aio_flush(session& s, const argv_t&) {
    s.drain();
    return true;
}

bool cmd_flush(session& s, const argv_t&) {
    const auto ec = s.wait([&](done_fn done) { s.img().async_flush(done); });
    if (ec) std::printf("flush failed: %s\n", error_text(ec).c_str());
    return !ec;
}

/// Extents of the whole image, or nullopt after printing the error.
std::optional<std::vector<extent>> all_extents(session& s, std::uint64_t from, std::uint64_t to) {
    std::vector<extent> out;
    if (to <= from) return out;
    if (auto ec = block_status(s.loop(), s.img(), from, to - from, out)) {
        std::printf("block status failed: %s\n", error_text(ec).c_str());
        return std::nullopt;
    }
    return out;
}

bool allocated_here(const extent& e) {
    return e.depth == 0 && e.present;
}

bool cmd_map(session& s, const argv_t&) {
    auto ext = all_extents(s, 0, s.img().size());
    if (!ext) return false;
    // Runs of "allocated in this image" and "not", as qemu-io prints them.
    std::vector<std::pair<range, bool>> runs;
    for (const auto& e : *ext) {
        const bool a = allocated_here(e);
        if (!runs.empty() && runs.back().second == a)
            runs.back().first.length += e.length;
        else
            runs.push_back({{e.offset, e.length}, a});
    }
    for (const auto& [r, a] : runs) {
        std::printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n",
                    io_size_string(static_cast<double>(r.length)).c_str(), r.length,
                    a ? "    allocated" : "not allocated", io_size_string(static_cast<double>(r.offset)).c_str(),
                    r.offset);
    }
    return true;
}

bool cmd_alloc(session& s, const argv_t& argv) {
    auto off = number(argv[1]);
    if (!off) return false;
    std::uint64_t count = sector_size;
    if (argv.size() > 2) {
        auto c = number(argv[2]);
        if (!c) return false;
        count = *c;
    }
    const std::uint64_t size = s.img().size();
    const std::uint64_t begin = std::min(*off, size);
    const std::uint64_t end = begin + std::min(count, size - begin);
    const std::uint64_t a0 = begin / sector_size * sector_size;
    const std::uint64_t a1 = std::min(size, (end + sector_size - 1) / sector_size * sector_size);
    auto ext = all_extents(s, a0, a1);
    if (!ext) return false;
    std::uint64_t allocated = 0;
    for (const auto& e : *ext) {
        if (!allocated_here(e)) continue;
        const std::uint64_t x = std::max(e.offset, begin), y = std::min(e.offset + e.length, end);
        if (y > x) allocated += y - x;
    }
    std::printf("%" PRIu64 "/%" PRIu64 " bytes allocated at offset %s\n", allocated, end - begin,
                io_size_string(static_cast<double>(*off)).c_str());
    return true;
}

bool cmd_info(session& s, const argv_t&) {
    const image_info i = s.img().info();
    std::printf("format name: %s\n", std::string(to_string(i.format)).c_str());
    std::printf("cluster size: %s\n", io_size_string(static_cast<double>(i.cluster_size)).c_str());
    std::printf("vm state offset: %s\n", io_size_string(0).c_str());
    return true;
}

bool cmd_length(session& s, const argv_t&) {
    std::printf("%s\n", io_size_string(static_cast<double>(s.img().size())).c_str());
    return true;
}

bool cmd_truncate(session& s, const argv_t& argv) {
    auto a = options(argv, {{'m', "", true}});
    if (!a) return false;
    if (auto m = a->last("m"); m && *m != "off") {
        report("truncate: preallocation mode '" + *m + "' is not supported (only 'off')");
        return false;
    }
    if (a->positional.size() != 1) return usage_of(argv[0]);
    auto size = number(a->positional[0]);
    if (!size) return false;
    const std::uint64_t current = s.img().size();
    if (*size < current) {
        report(s.path() + ": shrinking is not supported (the image is " + std::to_string(current) + " bytes)");
        return false;
    }
    if (*size % sector_size) {
        report(s.path() + ": invalid image size " + std::to_string(*size) + ": it must be a multiple of 512");
        return false;
    }
    if (auto ec = grow(s.loop(), s.img(), *size)) {
        report(s.path() + ": " + ec.message());
        return false;
    }
    return true;
}

bool cmd_sleep(session& s, const argv_t& argv) {
    char* end = nullptr;
    const long ms = std::strtol(argv[1].c_str(), &end, 0);
    if (argv[1].empty() || *end || ms < 0) {
        std::printf("%s is not a valid number\n", argv[1].c_str());
        return false;
    }
    // The loop keeps running: requests in flight complete meanwhile.
    boost::asio::steady_timer timer(s.loop().context(), std::chrono::milliseconds(ms));
    bool fired = false;
    timer.async_wait([&fired](boost::system::error_code) { fired = true; });
    s.loop().run_until([&fired] { return fired; });
    return true;
}

bool cmd_help(session&, const argv_t& argv) {
    if (argv.size() == 2) {
        const command* c = find(argv[1]);
        if (!c) {
            std::printf("command %s not found\n", argv[1].c_str());
            return false;
        }
        usage(*c);
        if (!c->help.empty()) std::printf("\n%.*s\n", static_cast<int>(c->help.size()), c->help.data());
        return true;
    }
    for (std::size_t i = 0; i < command_count; ++i) usage(commands[i]);
    std::printf("\nUse 'help commandname' for extended help.\n");
    return true;
}

bool cmd_close(session& s, const argv_t&) {
    // Requests in flight complete first, as qemu-io drains on close.
    const bool ok = s.close();
    return ok;
}

/// The protocol drivers qemu-io's open -o driver= names, on a local file:
/// they check what kind of file it is, then the file is read as raw.
bool protocol_file_ok(const std::string& driver, const std::string& file, bool read_only) {
    const int fd = ::open(file.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        report("can't open: Could not open '" + file + "': " + std::strerror(err));
        return false;
    }
    struct stat st {};
    const bool statted = ::fstat(fd, &st) == 0;
    ::close(fd);
    if (driver == "file" && (!statted || !S_ISREG(st.st_mode))) {
        report("can't open: 'file' driver requires '" + file + "' to be a regular file");
        return false;
    }
    if (driver != "file" && (!statted || !(S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)))) {
        report("can't open: '" + driver + "' driver requires '" + file + "' to be either a character or block device");
        return false;
    }
    return true;
}

bool cmd_open(session& s, const argv_t& argv) {
    auto a = options(argv, {{'r', "", false},
                            {'n', "", false},
                            {'t', "", true},
                            {'o', "", true},
                            {'f', "", true},
                            {'U', "", false},
                            {'k', "", false},
                            {'i', "", true},
                            {'d', "", true}});
    if (!a) return false;
    if (s.is_open()) {
        report("file open already, try 'help close'");
        return false;
    }
    if (a->positional.size() > 1) return usage_of(argv[0]);
    open_options o;
    o.read_only = a->has("r");
    o.direct = a->has("n");
    if (auto t = a->last("t")) {
        if (*t == "none" || *t == "directsync")
            o.direct = true;
        else if (*t != "writeback" && *t != "writethrough" && *t != "unsafe") {
            report("Invalid cache option: " + *t);
            return false;
        }
    }
    if (auto i = a->last("i")) {
        if (*i == "io_uring")
            o.backend = file_backend::io_uring;
        else if (*i == "threads")
            o.backend = file_backend::threads;
        else if (*i != "native") {
            report("Invalid aio option: " + *i + " (threads, native or io_uring)");
            return false;
        }
    }
    // The -o lists as one set of node options; read-only and locking are
    // the open's own.
    node_options tree;
    for (const auto& list : a->all("o")) {
        std::string why;
        auto items = parse_dotted_options(list, why);
        if (!items) {
            report("can't open: " + why);
            return false;
        }
        for (auto& [key, value] : *items) {
            if (key == "read-only") {
                o.read_only = value == "on" || value == "true";
            } else if (key == "locking") {
                if (value != "on" && value != "off" && value != "auto") {
                    report("can't open: Parameter 'locking' does not accept value '" + value + "'");
                    return false;
                }
                o.locking = value == "on" ? lock_mode::on : value == "off" ? lock_mode::off : lock_mode::automatic;
            } else {
                tree[key] = value;
            }
        }
    }
    std::string driver;
    if (auto f = a->last("f")) driver = *f;
    if (auto it = tree.find("driver"); it != tree.end()) driver = it->second;
    std::string file = a->positional.empty() ? std::string{} : a->positional[0];
    bool simple = true;
    for (const auto& [key, value] : tree) {
        if (key == "filename" || key == "file.filename")
            file = value;
        else if (key != "driver")
            simple = false;
    }
    if (!simple) {
        // A tree of nodes (a format nested in another, a protocol's own
        // options): opened as the json: name it amounts to.
        if (!driver.empty()) tree["driver"] = driver;
        // A file named on the line with options for it below ("file.align"
        // with blkdebug::IMAGE) is that node's file name, as in QEMU.
        if (!file.empty() && !tree.count("filename") && !tree.count("file.filename")) tree["filename"] = file;
        return s.open(json_name(tree), o, true);
    }
    if (file.empty()) {
        report("can't open: no file name given (open [-r] [-o driver=FMT,filename=FILE] [FILE])");
        return false;
    }
    if (driver == "file" || driver == "host_device" || driver == "host_cdrom") {
        if (!protocol_file_ok(driver, file, o.read_only)) return false;
        o.format = image_format::raw;
        o.character_device = driver != "file";  // host_device/host_cdrom take character devices
    } else if (!driver.empty()) {
        o.format = parse_format(driver);
        if (!o.format) {
            report("can't open: Unknown driver '" + driver + "' (qed-io supports qed, raw, file and host_device)");
            return false;
        }
    }
    return s.open(file, o, a->positional.empty());
}

bool cmd_quit(session& s, const argv_t&) {
    s.quit_requested = true;
    return true;
}

const command commands[] = {
    {"aio_flush", "", 0, 0, true, false, "", "completes all outstanding aio requests", "", cmd_aio_flush},
    {"aio_read", "", 2, -1, true, false, "[-iqv] [-P pattern] off len [len..]",
     "asynchronously reads a number of bytes",
     " Starts the read and goes on with the next command; the result is printed\n"
     " when it completes. aio_flush waits for every request in flight.\n"
     " -P, -- use a pattern to verify read data\n"
     " -q, -- quiet mode, do not show I/O statistics\n"
     " -v, -- dump buffer to standard output",
     cmd_aio_read},
    {"aio_write", "", 2, -1, true, true, "[-fiquz] [-P pattern] off len [len..]",
     "asynchronously writes a number of bytes",
     " Starts the write and goes on with the next command; the result is printed\n"
     " when it completes. aio_flush waits for every request in flight.\n"
     " -P, -- use different pattern to fill file\n"
     " -f, -- use Force Unit Access semantics\n"
     " -q, -- quiet mode, do not show I/O statistics\n"
     " -u, -- with -z, allow unmapping\n"
     " -z, -- write zeroes",
     cmd_aio_write},
    {"alloc", "", 1, 2, true, false, "offset [count]", "checks if offset is allocated in the file", "", cmd_alloc},
    {"close", "c", 0, 0, true, false, "", "close the current open file", "", cmd_close},
    {"discard", "", 2, -1, true, true, "[-Cq] off len", "discards a number of bytes at a specified offset",
     " Whole clusters of a QED image give their space back to the host file\n system and read as zeros; a raw file "
     "gets a hole punched.",
     cmd_discard},
    {"flush", "", 0, 0, true, false, "", "flush all in-core file state to disk", "", cmd_flush},
    {"help", "?", 0, 1, false, false, "[command]", "help for one or all commands", "", cmd_help},
    {"info", "", 0, 0, true, false, "", "prints information about the current file", "", cmd_info},
    {"length", "", 0, 0, true, false, "", "gets the length of the current file", "", cmd_length},
    {"map", "", 0, 0, true, false, "", "prints the allocated areas of a file", "", cmd_map},
    {"open", "o", 0, -1, false, false, "[-rnU] [-t cache] [-i aio] [-f fmt] [-o options] [path]",
     "open the file specified by path",
     " Opens a new file for I/O (the one open before must be closed first).\n"
     " -r, -- open file read-only\n"
     " -n, -- disable host cache, short for -t none\n"
     " -t, -- use the given cache mode\n"
     " -i, -- use AIO mode (threads or io_uring)\n"
     " -o, -- options: driver (qed, raw, file, host_device), filename, file.filename,\n"
     "        read-only, locking",
     cmd_open},
    {"quit", "q", 0, 0, false, false, "", "exit the program", "", cmd_quit},
    {"read", "r", 2, -1, true, false, "[-Cpqv] [-P pattern [-s off] [-l len]] off len",
     "reads a number of bytes at a specified offset",
     " reads a range of bytes from the given offset\n\n"
     " Example:\n 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file\n\n"
     " -C, -- read with copy-on-read (what the backing file supplies is written\n"
     "        into the image)\n"
     " -l, -- length for pattern verification (only with -P)\n"
     " -p, -- ignored for backwards compatibility\n"
     " -P, -- use a pattern to verify read data\n"
     " -q, -- quiet mode, do not show I/O statistics\n"
     " -s, -- start offset for pattern verification (only with -P)\n"
     " -v, -- dump buffer to standard output",
     cmd_read},
    {"readv", "", 2, -1, true, false, "[-Cqv] [-P pattern] off len [len..]",
     "reads a number of bytes at a specified offset", "", cmd_readv},
    {"sleep", "", 1, 1, false, false, "milliseconds", "waits for the given value in milliseconds", "", cmd_sleep},
    {"truncate", "", 1, 3, true, true, "[-m prealloc_mode] off", "truncates the current file at the given offset",
     " Grows the image; QED images never shrink.", cmd_truncate},
    {"write", "w", 2, -1, true, true, "[-fnpquz] [-P pattern | -s source_file] off len",
     "writes a number of bytes at a specified offset",
     " writes a range of bytes from the given offset\n\n"
     " Example:\n 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file\n\n"
     " Writes into a segment of the currently open file, using a buffer\n"
     " filled with a set pattern (0xcdcdcdcd).\n"
     " -f, -- use Force Unit Access semantics\n"
     " -n, -- with -z, don't allow slow fallback (accepted, no effect)\n"
     " -p, -- ignored for backwards compatibility\n"
     " -P, -- use different pattern to fill file\n"
     " -s, -- use the contents of a file (repeated as needed) to fill the buffer\n"
     " -q, -- quiet mode, do not show I/O statistics\n"
     " -u, -- with -z, allow unmapping\n"
     " -z, -- write zeroes",
     cmd_write},
    {"writev", "", 2, -1, true, true, "[-fq] [-P pattern] off len [len..]",
     "writes a number of bytes at a specified offset", "", cmd_writev},
};
const std::size_t command_count = sizeof commands / sizeof commands[0];

argv_t split(const std::string& line) {
    argv_t words;
    std::istringstream in(line);
    for (std::string w; in >> w;) words.push_back(w);
    return words;
}

}  // namespace

bool execute(session& s, const std::string& line) {
    const argv_t argv = split(line);
    if (argv.empty()) return true;
    const command* c = find(argv[0]);
    auto failed = [&s] {
        s.mark_failed();
        return false;
    };
    if (!c) {
        std::fflush(stdout);
        std::fprintf(stderr, "command \"%s\" not found\n", argv[0].c_str());
        return failed();
    }
    const int n = static_cast<int>(argv.size()) - 1;
    if (n < c->min_args || (c->max_args >= 0 && n > c->max_args)) {
        std::fflush(stdout);
        if (c->max_args < 0)
            std::fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n", n, argv[0].c_str(),
                         c->min_args);
        else if (c->min_args == c->max_args)
            std::fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n", n, argv[0].c_str(),
                         c->min_args);
        else
            std::fprintf(stderr, "bad argument count %d to %s, expected between %d and %d arguments\n", n,
                         argv[0].c_str(), c->min_args, c->max_args);
        return failed();
    }
    if (c->needs_image && !s.is_open()) {
        report("no file open, try 'help open'");
        return failed();
    }
    if (c->writes && s.img().info().read_only) {
        report(s.path() + ": the image is open read-only (-r)");
        return failed();
    }
    const bool ok = c->run(s, argv);
    std::fflush(stdout);
    if (!ok) return failed();
    return true;
}

}  // namespace qed::tools::io
