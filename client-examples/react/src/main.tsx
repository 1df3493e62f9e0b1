import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { AiChat } from './AiChat';
import { readConfig } from './config';
import './styles.css';

const config = readConfig();

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <AiChat serverUrl={config.serverUrl} accessToken={config.token} transports={config.transports} />
  </StrictMode>,
);
