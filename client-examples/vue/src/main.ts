import { createApp } from 'vue';
import AiChat from './AiChat.vue';
import { readConfig } from '../../shared/config';
import '../../shared/styles.css';

const config = readConfig();

createApp(AiChat, {
  serverUrl: config.serverUrl,
  accessToken: config.token,
  transports: config.transports,
}).mount('#app');
