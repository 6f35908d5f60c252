// SPDX-License-Identifier: BSL-1.0
// Helpers shared by the qed-nbd tests: temporary directories, child
// processes with time limits (the server, qemu-img, nbdcopy...), and a
// server fixture that always kills what it started.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "qed/image.hpp"

namespace nbdtest {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

inline std::string read_file(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

inline void write_file(const fs::path& p, const std::string& data) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << data;
}

/// A fresh directory under $QED_TEST_TMPDIR (or /tmp), removed afterwards.
class temp_dir {
public:
    explicit temp_dir(const std::string& tag) {
        const char* root = std::getenv("QED_TEST_TMPDIR");
        fs::path base = root && *root ? fs::path(root) : fs::path("/tmp");
        fs::create_directories(base);
        std::string templ = (base / ("nbd-" + tag + "-XXXXXX")).string();
        if (!::mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
        path_ = templ;
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    const fs::path& path() const { return path_; }
    std::string operator/(const std::string& name) const { return (path_ / name).string(); }

private:
    fs::path path_;
};

/// The qed-nbd binary: $QED_NBD, else beside this test in the build tree
/// (build/test/test_nbd_x -> build/src/server/qed-nbd).
inline std::string server_binary() {
    if (const char* env = std::getenv("QED_NBD"); env && *env) return env;
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    return (self.parent_path().parent_path() / "src" / "server" / "qed-nbd").string();
}

/// Whether `tool` is on PATH.
inline bool have(const std::string& tool) {
    const char* path = std::getenv("PATH");
    std::stringstream ss(path ? path : "/usr/bin:/bin");
    std::string dir;
    while (std::getline(ss, dir, ':')) {
        if (::access((fs::path(dir) / tool).c_str(), X_OK) == 0) return true;
    }
    return false;
}

/// A child process in its own process group; killed (with its group) if
/// still running when destroyed.
class child {
public:
    child() = default;
    child(const std::vector<std::string>& argv, const fs::path& out, const fs::path& err) { start(argv, out, err); }
    ~child() { kill_hard(); }
    child(const child&) = delete;
    child& operator=(const child&) = delete;

    void start(const std::vector<std::string>& argv, const fs::path& out, const fs::path& err) {
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        pid_ = ::fork();
        if (pid_ < 0) throw std::runtime_error("fork failed");
        if (pid_ == 0) {
            ::setpgid(0, 0);
            const int in = ::open("/dev/null", O_RDONLY);
            const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            ::dup2(in, 0);
            ::dup2(o, 1);
            ::dup2(e, 2);
            ::execvp(args[0], args.data());
            ::_exit(127);
        }
        ::setpgid(pid_, pid_);
        status_.reset();
    }

    pid_t pid() const { return pid_; }

    /// Exit status if it ended (WEXITSTATUS, or 128 + signal).
    std::optional<int> poll() {
        if (status_ || pid_ <= 0) return status_;
        int st = 0;
        const pid_t r = ::waitpid(pid_, &st, WNOHANG);
        if (r == pid_) status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return status_;
    }

    /// Wait up to `limit`; nullopt if still running.
    std::optional<int> wait_for(std::chrono::milliseconds limit) {
        const auto until = std::chrono::steady_clock::now() + limit;
        while (!poll()) {
            if (std::chrono::steady_clock::now() >= until) return std::nullopt;
            std::this_thread::sleep_for(5ms);
        }
        return status_;
    }

    void signal(int sig) {
        if (pid_ > 0 && !poll()) ::kill(pid_, sig);
    }

    void kill_hard() {
        if (pid_ > 0 && !poll()) {
            ::kill(-pid_, SIGKILL);
            ::kill(pid_, SIGKILL);
            int st = 0;
            ::waitpid(pid_, &st, 0);
            status_ = 128 + SIGKILL;
        }
    }

private:
    pid_t pid_ = -1;
    std::optional<int> status_;
};

struct run_result {
    int status = -1;  ///< exit status; -1 if it timed out (and was killed)
    std::string out;
    std::string err;
};

/// Run a command to completion within `limit` (killed after it).
inline run_result run(const std::vector<std::string>& argv, const fs::path& scratch,
                      std::chrono::milliseconds limit = 60s) {
    static int counter = 0;
    const std::string tag = std::to_string(::getpid()) + "-" + std::to_string(counter++);
    const fs::path out = scratch / ("run-" + tag + ".out");
    const fs::path err = scratch / ("run-" + tag + ".err");
    run_result r;
    {
        child c(argv, out, err);
        const auto st = c.wait_for(limit);
        r.status = st ? *st : -1;
    }  // killed here if it timed out
    r.out = read_file(out);
    r.err = read_file(err);
    std::error_code ec;
    fs::remove(out, ec);
    fs::remove(err, ec);
    return r;
}

inline std::string describe(const std::vector<std::string>& argv, const run_result& r) {
    std::string s;
    for (const auto& a : argv) s += a + " ";
    return s + "-> status " + std::to_string(r.status) + "\nstdout: " + r.out + "\nstderr: " + r.err;
}

/// Run and require exit status 0.
#define NBD_RUN_OK(scratch, ...)                                                           \
    [&] {                                                                                  \
        const std::vector<std::string> nbd_argv_ = __VA_ARGS__;                            \
        auto nbd_r_ = ::nbdtest::run(nbd_argv_, scratch);                                  \
        BOOST_REQUIRE_MESSAGE(nbd_r_.status == 0, ::nbdtest::describe(nbd_argv_, nbd_r_)); \
        return nbd_r_;                                                                     \
    }()

/// A TCP port that was free a moment ago.
inline std::uint16_t free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

/// A running qed-nbd. start() waits until it listens (its pid file
/// appears); the destructor kills it if a test did not stop it.
class server {
public:
    explicit server(const temp_dir& dir) : dir_(dir) {}
    ~server() { proc_.kill_hard(); }

    /// Start on TCP 127.0.0.1 with a free port (`unix_socket` false) or on
    /// a Unix socket in the temp dir; `args` go before the image name (none
    /// if `image` is empty: --export/--dir name the images).
    void start(std::vector<std::string> args, const std::string& image, bool unix_socket = false) {
        // A port found free may be taken by the time the server binds it
        // (tests run in parallel): try another one then.
        for (int attempt = 0;; ++attempt) {
            const std::string n = std::to_string(++count_);
            pid_file_ = dir_ / ("qed-nbd-" + n + ".pid");
            err_file_ = dir_ / ("qed-nbd-" + n + ".err");
            std::vector<std::string> argv{server_binary()};
            if (unix_socket) {
                socket_ = dir_ / ("nbd-" + n + ".sock");
                argv.insert(argv.end(), {"-k", socket_});
            } else {
                socket_.clear();
                port_ = free_port();
                argv.insert(argv.end(), {"-p", std::to_string(port_), "-b", "127.0.0.1"});
            }
            argv.insert(argv.end(), {"--pid-file", pid_file_});
            argv.insert(argv.end(), args.begin(), args.end());
            if (!image.empty()) argv.push_back(image);
            proc_.start(argv, dir_ / ("qed-nbd-" + n + ".out"), err_file_);
            const auto until = std::chrono::steady_clock::now() + 15s;
            while (!fs::exists(pid_file_)) {
                if (auto st = proc_.poll()) {
                    const std::string err = read_file(err_file_);
                    if (!unix_socket && attempt < 5 && err.find("in use") != std::string::npos) break;
                    BOOST_FAIL("qed-nbd exited with " << *st << " before listening: " << err);
                }
                if (std::chrono::steady_clock::now() > until) BOOST_FAIL("qed-nbd did not start listening");
                std::this_thread::sleep_for(5ms);
            }
            if (fs::exists(pid_file_)) return;
        }
    }

    /// Start and expect it to fail; returns (exit status, stderr). No image
    /// argument if `image` is empty.
    std::pair<int, std::string> start_failing(std::vector<std::string> args, const std::string& image) {
        const std::string n = std::to_string(++count_);
        err_file_ = dir_ / ("qed-nbd-" + n + ".err");
        std::vector<std::string> argv{server_binary(), "-p", std::to_string(free_port())};
        argv.insert(argv.end(), args.begin(), args.end());
        if (!image.empty()) argv.push_back(image);
        proc_.start(argv, dir_ / ("qed-nbd-" + n + ".out"), err_file_);
        const auto st = proc_.wait_for(15s);
        BOOST_REQUIRE_MESSAGE(st, "qed-nbd did not exit");
        return {*st, read_file(err_file_)};
    }

    std::string uri(const std::string& export_name = "") const {
        if (!socket_.empty()) return "nbd+unix:///" + export_name + "?socket=" + socket_;
        return "nbd://127.0.0.1:" + std::to_string(port_) + (export_name.empty() ? "" : "/" + export_name);
    }
    std::uint16_t port() const { return port_; }
    const std::string& socket_path() const { return socket_; }
    std::string stderr_text() const { return read_file(err_file_); }
    /// Waits until `done(log)` holds for the server's log, which it writes
    /// as a connection ends -- sometimes well after the client that caused
    /// the line has exited (over 2 s under ASan on a loaded machine). False
    /// after `limit`, a hang guard.
    template <class Pred>
    bool wait_for_log(Pred done, std::chrono::milliseconds limit = 30s) const {
        for (const auto end = std::chrono::steady_clock::now() + limit;;) {
            if (done(stderr_text())) return true;
            if (std::chrono::steady_clock::now() >= end) return false;
            std::this_thread::sleep_for(10ms);
        }
    }
    child& process() { return proc_; }

    /// SIGTERM, then wait for the exit status (killed after `limit`).
    int stop(std::chrono::milliseconds limit = 20s) {
        proc_.signal(SIGTERM);
        return wait(limit);
    }
    /// Wait for it to exit on its own.
    int wait(std::chrono::milliseconds limit = 20s) {
        auto st = proc_.wait_for(limit);
        if (!st) {
            proc_.kill_hard();
            BOOST_ERROR("qed-nbd did not exit within the time limit; stderr: " << stderr_text());
            return -1;
        }
        return *st;
    }

private:
    const temp_dir& dir_;
    child proc_;
    int count_ = 0;
    std::string pid_file_;
    std::string err_file_;
    std::string socket_;
    std::uint16_t port_ = 0;
};

/// Deterministic pseudo-random bytes.
inline std::string random_bytes(std::size_t n, std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(gen() & 0xff);
    return s;
}

/// The 64-bit QED features field of an image file (NEED_CHECK is 0x02).
inline std::uint64_t qed_features(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::string h(64, '\0');
    f.read(h.data(), 64);
    BOOST_REQUIRE(f.gcount() == 64 && h.compare(0, 4, std::string("QED\0", 4)) == 0);
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(h[16 + static_cast<std::size_t>(i)]);
    return v;
}

// ---------------------------------------------------------------------------
// Images through the library
// ---------------------------------------------------------------------------

template <class... Args, class Start>
inline std::tuple<Args...> await(boost::asio::io_context& ioc, Start start) {
    std::optional<std::tuple<Args...>> result;
    start([&result](Args... args) { result.emplace(std::move(args)...); });
    ioc.restart();
    while (!result && ioc.run_one()) {
    }
    BOOST_REQUIRE(result);
    return std::move(*result);
}

inline void create_qed(const std::string& path, std::uint64_t size) {
    boost::asio::io_context ioc;
    qed::create_options o;
    o.size = size;
    auto [ec] = await<std::error_code>(
        ioc, [&](auto h) { qed::image::async_create(ioc.get_executor(), path, o, std::move(h)); });
    BOOST_REQUIRE_MESSAGE(!ec, ec.message());
}

/// The library on one io_context, with the log lines of the images it
/// opens kept (the remote-storage tests: nbd, rbd, ssh).
struct image_lib {
    boost::asio::io_context ioc;
    std::vector<std::string> logs;

    qed::log_sink sink() {
        return [this](std::string_view l) { logs.emplace_back(l); };
    }
    bool logged(const std::string& part) const {
        for (const auto& l : logs)
            if (l.find(part) != std::string::npos) return true;
        return false;
    }
    std::string all_logs() const {
        std::string s;
        for (const auto& l : logs) s += l + "\n";
        return s;
    }

    std::error_code create(const std::string& path, std::uint64_t size, const std::string& backing = {},
                           std::optional<qed::image_format> fmt = {}) {
        qed::create_options o;
        if (size) o.size = size;
        o.backing_file = backing;
        if (fmt) o.format = *fmt;
        auto [ec] = await<std::error_code>(
            ioc, [&](auto h) { qed::image::async_create(ioc.get_executor(), path, o, std::move(h)); });
        return ec;
    }
    std::pair<std::error_code, qed::image> open(const std::string& path, bool read_only = false) {
        qed::open_options o;
        o.read_only = read_only;
        o.log = sink();
        auto [ec, img] = await<std::error_code, qed::image>(
            ioc, [&](auto h) { qed::image::async_open(ioc.get_executor(), path, o, std::move(h)); });
        return {ec, img};
    }
    qed::image must_open(const std::string& path, bool read_only = false) {
        auto [ec, img] = open(path, read_only);
        BOOST_REQUIRE_MESSAGE(!ec, path << ": " << ec.message() << "\n" << all_logs());
        return img;
    }
    std::error_code write(qed::image& img, std::uint64_t off, const std::string& data) {
        auto [ec, n] = await<std::error_code, std::size_t>(
            ioc, [&](auto h) { img.async_write_at(off, boost::asio::buffer(data.data(), data.size()), std::move(h)); });
        return ec;
    }
    std::string read(qed::image& img, std::uint64_t off, std::size_t len) {
        std::string out(len, '\x55');
        auto [ec, n] = await<std::error_code, std::size_t>(
            ioc, [&](auto h) { img.async_read_at(off, boost::asio::buffer(out.data(), out.size()), std::move(h)); });
        BOOST_REQUIRE_MESSAGE(!ec, ec.message());
        return out;
    }
    qed::check_result check(qed::image& img, qed::check_options::repair mode = qed::check_options::repair::none) {
        qed::check_options o;
        o.mode = mode;
        auto [ec, r] =
            await<std::error_code, qed::check_result>(ioc, [&](auto h) { img.async_check(o, std::move(h)); });
        BOOST_REQUIRE_MESSAGE(!ec, ec.message());
        return r;
    }
    void require_clean(qed::image& img) {
        const auto r = check(img);
        BOOST_CHECK_EQUAL(r.corruptions, 0u);
        BOOST_CHECK_EQUAL(r.leaks, 0u);
        BOOST_CHECK_EQUAL(r.check_errors, 0u);
    }
    void close(qed::image& img) {
        auto [ec] = await<std::error_code>(ioc, [&](auto h) { img.async_close(std::move(h)); });
        BOOST_REQUIRE_MESSAGE(!ec, ec.message());
    }
};

/// After the server has exited: the image opens, is clean (NEED_CHECK
/// clear, check finds nothing) and reads `expect` at `offset`.
inline void verify_image(const std::string& path, std::uint64_t offset = 0, const std::string& expect = {}) {
    BOOST_CHECK_MESSAGE((qed_features(path) & 0x02) == 0, "NEED_CHECK still set");
    boost::asio::io_context ioc;
    qed::open_options o;
    o.read_only = true;
    auto [ec, img] = await<std::error_code, qed::image>(
        ioc, [&](auto h) { qed::image::async_open(ioc.get_executor(), path, o, std::move(h)); });
    BOOST_REQUIRE_MESSAGE(!ec, ec.message());
    auto [cec, r] = await<std::error_code, qed::check_result>(
        ioc, [&](auto h) { img.async_check(qed::check_options{}, std::move(h)); });
    BOOST_CHECK(!cec);
    BOOST_CHECK_EQUAL(r.corruptions, 0u);
    BOOST_CHECK_EQUAL(r.leaks, 0u);
    if (!expect.empty()) {
        std::string got(expect.size(), '\0');
        auto [rec, n] = await<std::error_code, std::size_t>(
            ioc, [&](auto h) { img.async_read_at(offset, boost::asio::buffer(got.data(), got.size()), std::move(h)); });
        BOOST_CHECK(!rec);
        BOOST_CHECK_MESSAGE(got == expect, "image data differs at " << offset);
    }
    await<std::error_code>(ioc, [&](auto h) { img.async_close(std::move(h)); });
}

/// Write `data` at `offset` of an image file through the library.
inline void write_image(const std::string& path, std::uint64_t offset, const std::string& data) {
    boost::asio::io_context ioc;
    auto [ec, img] = await<std::error_code, qed::image>(
        ioc, [&](auto h) { qed::image::async_open(ioc.get_executor(), path, qed::open_options{}, std::move(h)); });
    BOOST_REQUIRE_MESSAGE(!ec, ec.message());
    auto [wec, n] = await<std::error_code, std::size_t>(
        ioc, [&](auto h) { img.async_write_at(offset, boost::asio::buffer(data.data(), data.size()), std::move(h)); });
    BOOST_REQUIRE_MESSAGE(!wec, wec.message());
    auto [cec] = await<std::error_code>(ioc, [&](auto h) { img.async_close(std::move(h)); });
    BOOST_REQUIRE(!cec);
}

/// Make [offset, offset + length) of an image read as zeros (zero clusters
/// where whole clusters are covered and `may_unmap`).
inline void zero_image(const std::string& path, std::uint64_t offset, std::uint64_t length, bool may_unmap = true) {
    boost::asio::io_context ioc;
    auto [ec, img] = await<std::error_code, qed::image>(
        ioc, [&](auto h) { qed::image::async_open(ioc.get_executor(), path, qed::open_options{}, std::move(h)); });
    BOOST_REQUIRE_MESSAGE(!ec, ec.message());
    qed::zero_options o;
    o.may_unmap = may_unmap;
    auto [zec] = await<std::error_code>(ioc, [&](auto h) { img.async_write_zeroes(offset, length, o, std::move(h)); });
    BOOST_REQUIRE_MESSAGE(!zec, zec.message());
    auto [cec] = await<std::error_code>(ioc, [&](auto h) { img.async_close(std::move(h)); });
    BOOST_REQUIRE(!cec);
}

}  // namespace nbdtest
