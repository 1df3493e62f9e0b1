import { defineAppSuite } from './app-suite.mjs';

defineAppSuite('react');
