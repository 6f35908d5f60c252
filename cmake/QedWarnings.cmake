# Warnings for the project's own targets (not for dependencies).
add_library(qed_warnings INTERFACE)
target_compile_options(qed_warnings INTERFACE -Wall -Wextra -Wpedantic -Wshadow=local -Wnon-virtual-dtor
                                              -Wold-style-cast -Wcast-align -Wnull-dereference)
