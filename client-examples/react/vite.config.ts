import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

export default defineConfig({
  plugins: [react()],
  // Relative asset URLs: dist/ can be served from any path (the browser tests serve it
  // from a throwaway static server).
  base: './',
  server: {
    // chatwire's default CORS_ORIGIN is exactly http://localhost:5173: stay on that
    // port (fail loudly instead of silently moving to 5174, which CORS would refuse).
    host: 'localhost',
    port: 5173,
    strictPort: true,
    // The app imports @chatwire/resumable (linked from ../resumable by npm) and the
    // modules in ../shared.
    fs: { allow: ['.', '../resumable', '../shared'] },
  },
});
