/**
 * Transports for immortal sessions: the {@linkcode Link} abstraction and its
 * implementations: TCP, TLS, and HTTP (WebSocket, or HTTP streaming where
 * proxies refuse WebSocket).
 *
 * @module
 */

export { type Acceptor, describePeer, type Dialer, formatAddr, type Link } from "./link.ts";
export {
  ListenerAcceptor,
  TcpAcceptor,
  type TcpAcceptorOptions,
  tcpDialer,
  type TcpDialerOptions,
  TcpLink,
} from "./tcp.ts";
export {
  TlsAcceptor,
  type TlsAcceptorOptions,
  tlsDialer,
  type TlsDialerOptions,
  TlsHandshakeError,
} from "./tls.ts";
export {
  webSocketDialer,
  type WebSocketDialerOptions,
  WebSocketLink,
  webSocketUrl,
} from "./websocket.ts";
export { HttpLinkAcceptor, type HttpLinkAcceptorOptions } from "./http_acceptor.ts";
export {
  httpStreamDialer,
  type HttpStreamDialerOptions,
  httpUrl,
  LinkRefused,
} from "./http_stream.ts";
export { httpDialer, type HttpDialerOptions, type HttpTransport } from "./http_dialer.ts";
