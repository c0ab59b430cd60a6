/**
 * Transports for immortal sessions: the {@linkcode Link} abstraction and its
 * TCP and TLS implementations.
 *
 * @module
 */

export { type Acceptor, type Dialer, formatAddr, type Link } from "./link.ts";
export {
  ListenerAcceptor,
  TcpAcceptor,
  type TcpAcceptorOptions,
  tcpDialer,
  type TcpDialerOptions,
  TcpLink,
} from "./tcp.ts";
export { TlsAcceptor, type TlsAcceptorOptions, tlsDialer, type TlsDialerOptions } from "./tls.ts";
