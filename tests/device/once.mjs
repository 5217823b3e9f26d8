// Waiting for the server's answer, as the device does: the first of `events` on `socket`
// resolves [event, payload]; an `error` event not asked for rejects with its payload.
export function once(socket, events, timeoutMs = 120000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout waiting for ${events}`)), timeoutMs);
    const handlers = {};
    const done = () => { clearTimeout(timer); for (const [e, h] of Object.entries(handlers)) socket.off(e, h); };
    for (const event of new Set([...events, "error"])) {
      handlers[event] = (payload) => {
        done();
        if (events.includes(event)) resolve([event, payload]);
        else reject(new Error(`server error: ${JSON.stringify(payload)}`));
      };
      socket.on(event, handlers[event]);
    }
  });
}
