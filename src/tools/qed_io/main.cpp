// SPDX-License-Identifier: BSL-1.0
// qed-io: exercise an image with qemu-io's commands, given with -c or read
// from standard input.
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstdio>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "common/cli.hpp"
#include "common/driver.hpp"
#include "common/image_opts.hpp"
#include "qed/version.hpp"
#include "qed_io/commands.hpp"
#include "qed_io/session.hpp"

namespace {

using namespace qed::tools;

void print_help() {
    std::printf(
        "Usage: qed-io [OPTIONS]... [-c STRING]... [file]\n"
        "QED and raw disk exerciser, compatible with qemu-io's syntax\n\n"
        "  -c, --cmd STRING     execute command with its arguments\n"
        "                       from the given string\n"
        "  -f, --format FMT     specifies the image format (qed or raw)\n"
        "  -r, --read-only      export read-only\n"
        "  -s, --snapshot       use snapshot file: writes go to a temporary overlay\n"
        "  -n, --nocache        disable host cache, short for -t none\n"
        "  -t, --cache=MODE     use the given cache mode for the image\n"
        "  -i, --aio=MODE       use AIO mode (threads or io_uring)\n"
        "  -U, --force-share    force shareable permissions on the image\n"
        "      --image-opts     the file argument is a list of options\n"
        "                       (driver=qed,file.filename=FILE)\n"
        "      --object TYPE,id=ID,...  an object (secret, tls-creds-*)\n"
        "  -h, --help           display this help and exit\n"
        "  -V, --version        output version information and exit\n\n"
        "Without -c, commands are read from standard input.\n"
        "See 'qed-io -c help' for information on available commands.\n");
}

/// Reads standard input on its own thread and hands each line to the event
/// loop, so requests in flight keep completing while we wait for input.
class line_reader {
public:
    explicit line_reader(driver& d) : driver_(d), shared_(std::make_shared<shared>()) {
        shared_->ioc = &d.context();
        shared_->guard.emplace(boost::asio::make_work_guard(d.context()));
        std::thread([s = shared_, lines = lines_] { read_loop(s, lines); }).detach();
    }
    ~line_reader() {
        // The thread may still be blocked in read(): cut it off from the loop.
        std::lock_guard<std::mutex> lock(shared_->mutex);
        shared_->ioc = nullptr;
        shared_->guard.reset();
    }
    line_reader(const line_reader&) = delete;
    line_reader& operator=(const line_reader&) = delete;

    /// The next line, or nullopt at end of input.
    std::optional<std::string> next() {
        driver_.run_until([this] { return !lines_->queue.empty() || lines_->eof; });
        if (lines_->queue.empty()) return std::nullopt;
        std::string line = std::move(lines_->queue.front());
        lines_->queue.pop_front();
        return line;
    }

private:
    using work_guard = boost::asio::executor_work_guard<boost::asio::io_context::executor_type>;
    struct shared {
        std::mutex mutex;
        boost::asio::io_context* ioc = nullptr;
        std::optional<work_guard> guard;
    };
    // Touched only on the loop's thread (inside posted handlers).
    struct inbox {
        std::deque<std::string> queue;
        bool eof = false;
    };

    static void deliver(const std::shared_ptr<shared>& s, const std::shared_ptr<inbox>& box, std::string line,
                        bool eof) {
        std::lock_guard<std::mutex> lock(s->mutex);
        if (!s->ioc) return;
        boost::asio::post(*s->ioc, [s, box, line = std::move(line), eof]() mutable {
            if (eof) {
                box->eof = true;
                s->guard.reset();  // nothing more will come: let the loop run dry
            } else {
                box->queue.push_back(std::move(line));
            }
        });
    }

    static void read_loop(std::shared_ptr<shared> s, std::shared_ptr<inbox> box) {
        std::string pending;
        char buf[4096];
        for (;;) {
            const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            pending.append(buf, static_cast<std::size_t>(n));
            for (std::size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
                deliver(s, box, pending.substr(0, nl), false);
                pending.erase(0, nl + 1);
            }
        }
        if (!pending.empty()) deliver(s, box, pending, false);
        deliver(s, box, {}, true);
    }

    driver& driver_;
    std::shared_ptr<shared> shared_;
    std::shared_ptr<inbox> lines_ = std::make_shared<inbox>();
};

int run(int argc, char** argv) {
    const std::vector<std::string> words(argv + 1, argv + argc);
    std::string error;
    auto args = parse_args(words,
                           {{'c', "cmd", true},
                            {'f', "format", true},
                            {'r', "read-only", false},
                            {'s', "snapshot", false},
                            {'n', "nocache", false},
                            {'t', "cache", true},
                            {'i', "aio", true},
                            {'U', "force-share", false},
                            {'h', "help", false},
                            {'V', "version", false},
                            {'k', "native-aio", false},
                            {0, "object", true},
                            {0, "image-opts", false}},
                           error);
    if (!args) {
        report(error + " (see 'qed-io --help')");
        return 1;
    }
    if (args->has("help")) {
        print_help();
        return 0;
    }
    if (args->has("version")) {
        std::printf("qed-io version " QED_VERSION "\nCopyright (c) 2026 the qed developers\n");
        return 0;
    }
    if (std::string why; !apply_image_options(*args, 1, "format", why)) {
        report(why);
        return 1;
    }
    if (args->positional.size() > 1) {
        report("too many arguments: give one image file (see 'qed-io --help')");
        return 1;
    }
    qed::open_options o;
    o.read_only = args->has("read-only");
    o.force_share = args->has("force-share");  // without -r refused, as qemu-io does
    if (auto f = args->last("format")) {
        o.format = qed::parse_format(*f);
        if (!o.format) {
            report("Unknown driver '" + *f + "' (qed-io supports qed and raw)");
            return 1;
        }
    }
    o.direct = args->has("nocache");
    if (auto t = args->last("cache")) {
        if (*t == "none" || *t == "directsync")
            o.direct = true;
        else if (*t != "writeback" && *t != "writethrough" && *t != "unsafe") {
            report("Invalid cache option: " + *t);
            return 1;
        }
    }
    if (auto i = args->last("aio")) {
        if (*i == "io_uring")
            o.backend = qed::file_backend::io_uring;
        else if (*i == "threads")
            o.backend = qed::file_backend::threads;
        else if (*i != "native") {
            report("Invalid aio option: " + *i + " (threads, native or io_uring)");
            return 1;
        }
    }

    driver d;
    io::session s(d);
    if (!args->positional.empty()) {
        const bool opened = args->has("snapshot") && !o.read_only
                                ? s.open_snapshot(args->positional[0], o)
                                : s.open(args->positional[0], o, args->has("image-opts"));
        if (!opened) return 1;
    }

    const auto commands = args->all("cmd");
    if (!commands.empty()) {
        for (const auto& c : commands) {
            io::execute(s, c);
            if (s.quit_requested) break;
        }
    } else {
        const bool interactive = ::isatty(STDIN_FILENO) != 0;
        line_reader in(d);
        for (;;) {
            if (interactive) {
                std::printf("qed-io> ");
                std::fflush(stdout);
            }
            auto line = in.next();
            if (!line) break;
            io::execute(s, *line);
            if (s.quit_requested) break;
        }
        if (interactive && !s.quit_requested) std::printf("\n");
    }
    const bool closed = s.close();
    std::fflush(stdout);
    return s.failed() || !closed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
    program_name = "qed-io";
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        report(std::string("internal error: ") + e.what());
        return 1;
    }
}
