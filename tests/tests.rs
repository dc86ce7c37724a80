//! Integration tests: real TLS over real sockets on 127.0.0.1:0, real files in temp dirs, and
//! the real binary where the command line is the subject.

mod util;

mod account_contract;
mod accounting;
mod admin;
mod attacks;
mod browser;
mod cli;
mod client_edges;
mod haproxy;
mod hostile_server;
mod http;
mod http_api;
mod http_curl;
mod http_files;
mod http_folder_links;
mod http_links;
mod http_redteam;
mod http_session;
mod interrupt;
mod link_contract;
mod links_cli;
mod list_bench;
mod login;
mod memory;
mod oneshot;
mod prelogin;
mod protocol;
mod quota;
mod receipt;
mod reload;
mod resume;
mod security;
mod shell;
mod shutdown;
mod state_contract;
mod storage;
mod stored_digests;
mod token_contract;
mod tokens_cli;
mod transfers;
mod trust;
