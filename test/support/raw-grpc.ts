import { connect } from "node:http2";

/** A gRPC length-prefixed frame around a message. */
export function frame(message: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

/** What a native gRPC call answered: grpc-status, grpc-message and the response headers. */
export interface RawGrpcAnswer {
  status?: string;
  message?: string;
  headers: Record<string, unknown>;
}

/**
 * One native gRPC (h2c) call of path with body as its bytes, sent as they are (no client
 * encodes them): status and message from the trailers or a trailers-only answer.
 */
export function rawGrpcCall(baseUrl: string, path: string, body: Uint8Array, header: Record<string, string> = {}): Promise<RawGrpcAnswer> {
  return new Promise((resolve, reject) => {
    const session = connect(baseUrl);
    session.on("error", reject);
    const req = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", ...header });
    const answer: RawGrpcAnswer = { headers: {} };
    const take = (h: Record<string, unknown>) => {
      if (h["grpc-status"] === undefined) return;
      answer.status = String(h["grpc-status"]);
      answer.message = decodeURIComponent(String(h["grpc-message"] ?? ""));
    };
    req.on("response", (h) => (Object.assign(answer.headers, h), take(h)));
    req.on("trailers", take);
    req.on("data", () => {});
    req.on("end", () => (session.close(), resolve(answer)));
    req.on("error", reject);
    req.end(body);
  });
}
