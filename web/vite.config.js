// Builds the viewer (index.html) and the admin page (admin/index.html) into the Python package, where the API
// serves them at /app/ (see src/playgate/api/app.py).
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));

export default defineConfig({
  base: "/app/",
  // The app uses the player kit from its sources, so that it builds and runs without the kit's dist/.
  resolve: { alias: { "@playgate/player": here("packages/player/src/index.ts") } },
  build: {
    outDir: here("../src/playgate/web/dist"),
    emptyOutDir: true,
    rollupOptions: {
      input: { viewer: here("index.html"), admin: here("admin/index.html") },
    },
  },
  server: {
    // `npm run dev` against a `playgate serve` on the default port.
    proxy: {
      "/auth": "http://127.0.0.1:8080",
      "/v1": "http://127.0.0.1:8080",
      "/videos": "http://127.0.0.1:8080",
      "/users": "http://127.0.0.1:8080",
      "/socket.io": { target: "ws://127.0.0.1:8080", ws: true },
    },
  },
});
