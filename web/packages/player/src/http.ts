// PlayGate over HTTP: bearer token, JSON bodies, problem+json answers turned into PlayGateError.

/** An answer that was not 2xx: `status`, and the problem document's `detail`, `field` and `reason` (why a stream
 * ended) when there is one. */
export class PlayGateError extends Error {
  readonly status: number;
  readonly field: string | null;
  readonly reason: string | null;

  constructor(
    status: number,
    problem: { detail?: string; title?: string; field?: string | null; reason?: string | null } | null,
  ) {
    super((problem && (problem.detail || problem.title)) || (status ? `HTTP ${status}` : "The server does not answer."));
    this.name = "PlayGateError";
    this.status = status;
    this.field = (problem && problem.field) || null;
    this.reason = (problem && problem.reason) || null;
  }
}

export interface Http {
  call<T>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<T | null>;
  url(path: string): string;
  token(): string | null;
}

/** An HTTP client of PlayGate at `baseUrl` ("" = this origin), sending the current token. */
export function createHttp(baseUrl: string, token: () => string | null, fetcher: typeof fetch): Http {
  const base = baseUrl.replace(/\/+$/, "");
  const url = (path: string): string => (/^https?:/.test(path) ? path : `${base}${path}`);
  async function call<T>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<T | null> {
    const sent: Record<string, string> = { Accept: "application/json", ...headers };
    const bearer = token();
    if (bearer) sent.Authorization = `Bearer ${bearer}`;
    if (body !== undefined) sent["Content-Type"] = "application/json";
    let response: Response;
    try {
      response = await fetcher(url(path), {
        method,
        headers: sent,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new PlayGateError(0, null);
    }
    if (response.status === 204) return null;
    const type = response.headers.get("content-type") || "";
    const data = type.includes("json") ? await response.json() : null;
    if (!response.ok) throw new PlayGateError(response.status, data);
    return data as T;
  }
  return { call, url, token };
}
