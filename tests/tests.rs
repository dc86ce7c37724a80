//! Integration tests: real TLS over real sockets on 127.0.0.1:0, real files in temp dirs, and
//! the real binary where the command line is the subject.

mod util;

mod attacks;
mod cli;
mod haproxy;
mod interrupt;
mod memory;
mod oneshot;
mod prelogin;
mod protocol;
mod quota;
mod reload;
mod resume;
mod security;
mod shell;
mod transfers;
mod trust;
