# SPDX-License-Identifier: BSL-1.0
# Man pages for qed-img, qed-io and qed-nbd, generated at build time by
# help2man from each program's --help and --version (so they follow the
# options the programs have), with the hand-written sections in docs/man/.
# Installed into man1 by `cmake --install`.
find_program(QED_HELP2MAN help2man)
if(NOT QED_HELP2MAN)
  message(STATUS "help2man not found: no man pages (apt-get install help2man)")
  return()
endif()
set(qed_man_pages)
foreach(tool qed-img qed-io qed-nbd)
  set(page ${PROJECT_BINARY_DIR}/man/${tool}.1)
  add_custom_command(
    OUTPUT ${page}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${PROJECT_BINARY_DIR}/man
    COMMAND ${CMAKE_COMMAND} -DHELP2MAN=${QED_HELP2MAN} -DPROGRAM=$<TARGET_FILE:${tool}>
            -DINCLUDE=${PROJECT_SOURCE_DIR}/docs/man/${tool}.h2m -DOUTPUT=${page}
            -P ${PROJECT_SOURCE_DIR}/cmake/QedManPage.cmake
    DEPENDS ${tool} ${PROJECT_SOURCE_DIR}/docs/man/${tool}.h2m ${PROJECT_SOURCE_DIR}/cmake/QedManPage.cmake
    COMMENT "Generating man page ${tool}.1"
    VERBATIM)
  list(APPEND qed_man_pages ${page})
endforeach()
add_custom_target(man ALL DEPENDS ${qed_man_pages})
install(FILES ${qed_man_pages} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
