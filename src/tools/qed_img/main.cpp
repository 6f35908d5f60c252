// SPDX-License-Identifier: BSL-1.0
// qed-img: create, inspect, check, convert and modify QED and raw images,
// with qemu-img's command syntax, outputs and exit statuses.
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "common/driver.hpp"
#include "qed/node_options.hpp"
#include "qed/version.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/options.hpp"

namespace {

using namespace qed::tools::img;

struct command {
    std::string_view name;
    int (*run)(const words&);
    std::string_view syntax;
};

// The command table. A new command is one line here plus its own file.
const command commands[] = {
    {"check", run_check, "check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] filename"},
    {"commit", run_commit, "commit [-q] [-f fmt] [-t cache] [-b base] [-d] [-p] filename"},
    {"compare", run_compare, "compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] filename1 filename2"},
    {"convert", run_convert,
     "convert [--salvage] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F "
     "backing_fmt]] "
     "[-o options] [-m num_requests] filename output_filename"},
    {"create", run_create, "create [-q] [-f fmt] [-b backing_file -F backing_fmt] [-u] [-o options] filename [size]"},
    {"dd", run_dd, "dd [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output"},
    {"info", run_info, "info [-f fmt] [--output=ofmt] [--backing-chain] filename"},
    {"map", run_map, "map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] filename"},
    {"measure", run_measure, "measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [-f fmt] filename]"},
    {"rebase", run_rebase,
     "rebase [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename"},
    {"resize", run_resize, "resize [-f fmt] [-q] [--shrink] filename [+ | -]size"},
    {"bench", run_bench,
     "bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] "
     "[-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename"},
};

void print_help() {
    std::printf(
        "usage: qed-img [-h | -V] command [command options]\n"
        "QED and raw disk image utility, compatible with qemu-img's syntax\n\n"
        "Command syntax:\n");
    for (const auto& c : commands) std::printf("  %.*s\n", static_cast<int>(c.syntax.size()), c.syntax.data());
    std::printf(
        "\n'fmt' is qed or raw; it is guessed from the file when not given.\n"
        "Sizes take the suffixes k, M, G, T, P and E (powers of 1024).\n"
        "'--output' takes human or json.\n"
        "Images may also be named by their nodes' options (json:{...} names, --image-opts)\n"
        "with the drivers below; --object throttle-group,id=ID,limits.iops-total=N... makes\n"
        "the groups throttle nodes name.\n");
    // qemu-img's line: every block driver a node may name (formats, protocols, filters).
    std::string drivers;
    for (const auto& d : qed::node_drivers()) drivers += " " + d;
    std::printf("\nSupported formats:%s\n", drivers.c_str());
}

int dispatch(int argc, char** argv) {
    if (argc < 2) return fail("Not enough arguments (see 'qed-img --help')");
    const std::string_view first = argv[1];
    if (first == "-h" || first == "--help" || first == "help") {
        print_help();
        return 0;
    }
    if (first == "-V" || first == "--version") {
        std::printf("qed-img version " QED_VERSION "\nCopyright (c) 2026 the qed developers\n");
        return 0;
    }
    const words args(argv + 2, argv + argc);
    for (const auto& c : commands) {
        if (c.name != first) continue;
        for (const auto& a : args) {
            if (a == "-h" || a == "--help") {
                std::printf("usage: qed-img %.*s\n", static_cast<int>(c.syntax.size()), c.syntax.data());
                return 0;
            }
        }
        return c.run(args);
    }
    return fail("Command not found: " + std::string(first) + " (see 'qed-img --help')");
}

}  // namespace

int main(int argc, char** argv) {
    qed::tools::program_name = "qed-img";
    try {
        const int status = dispatch(argc, argv);
        std::fflush(stdout);
        return status;
    } catch (const std::exception& e) {
        // Nothing is expected to throw but memory allocation; say so, don't abort.
        return fail(std::string("internal error: ") + e.what());
    }
}
