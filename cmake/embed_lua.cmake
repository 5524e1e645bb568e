# Writes OUT: a C file holding the gateway's Redis function library, made of
# lua/lib.lua and every operation's file after a header that names the
# library and its functions after a hash of the text (lua/lib.lua says why),
# so the binary carries its functions and needs no path at run time.
# The backend control functions (lua/control.lua) become a second library
# with stable names (that file says why), also on lib.lua.
# Usage: cmake -DLUA_DIR=... -DOUT=... -DOPS="join;leave;..." -DCONTROL=control -P embed_lua.cmake
file(READ "${LUA_DIR}/lib.lua" body)
foreach(op IN LISTS OPS)
  file(READ "${LUA_DIR}/${op}.lua" op_text)
  string(APPEND body "\n${op_text}")
endforeach()
string(SHA1 hash "${body}")
string(SUBSTRING "${hash}" 0 12 hash)
set(lib "#!lua name=sg_${hash}\nlocal FN_PREFIX = 'sg_${hash}_'\n${body}")
file(WRITE "${OUT}.txt.tmp" "${lib}")
file(READ "${OUT}.txt.tmp" hex HEX)
file(REMOVE "${OUT}.txt.tmp")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," arr "${hex}")
set(c "/* Generated from the lua/ files by cmake/embed_lua.cmake. Do not edit. */\n#include \"sg/ops.h\"\n#include \"sg/scripts.h\"\n\n")
string(APPEND c "const char sg_functions_library[] = {${arr}0x00};\n")
string(APPEND c "const size_t sg_functions_library_len = sizeof sg_functions_library - 1;\n")
string(APPEND c "const char sg_functions_prefix[] = \"sg_${hash}_\";\n")
file(READ "${LUA_DIR}/lib.lua" control_body)
foreach(op IN LISTS CONTROL)
  file(READ "${LUA_DIR}/${op}.lua" op_text)
  string(APPEND control_body "\n${op_text}")
endforeach()
set(control_lib "#!lua name=signal_control\nlocal FN_PREFIX = 'signal_'\n${control_body}")
file(WRITE "${OUT}.txt.tmp" "${control_lib}")
file(READ "${OUT}.txt.tmp" hex HEX)
file(REMOVE "${OUT}.txt.tmp")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," arr "${hex}")
string(APPEND c "\nconst char sg_control_library[] = {${arr}0x00};\n")
string(APPEND c "const size_t sg_control_library_len = sizeof sg_control_library - 1;\n")
file(WRITE "${OUT}.tmp" "${c}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
