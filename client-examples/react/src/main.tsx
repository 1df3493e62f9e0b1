import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { AiChat } from './AiChat';
import { readConfig } from '../../shared/config';
import '../../shared/styles.css';

const config = readConfig();

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <AiChat serverUrl={config.serverUrl} accessToken={config.token} transports={config.transports} />
  </StrictMode>,
);
